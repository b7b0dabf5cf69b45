"""Import every model so the metadata is complete (Alembic, tests)."""

from bot.channels.linking import TelegramLinkToken
from bot.channels.models import EarlyStatus, OutboxMessage, OutboxPart
from bot.channels.verification import VerificationCode
from bot.clinic_settings import ClinicProfile
from bot.conversations.models import Conversation, Handoff, Message, PatientRequest
from bot.db import Base
from bot.labs.models import LabOrder
from bot.patients.models import ChannelIdentity, Patient
from bot.promises.models import Promise
from bot.staff.models import AuditEvent, StaffUser

__all__ = [
    "AuditEvent",
    "Base",
    "ChannelIdentity",
    "ClinicProfile",
    "EarlyStatus",
    "Conversation",
    "Handoff",
    "LabOrder",
    "Message",
    "OutboxMessage",
    "OutboxPart",
    "Patient",
    "PatientRequest",
    "Promise",
    "StaffUser",
    "TelegramLinkToken",
    "VerificationCode",
]
