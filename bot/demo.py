"""Seed the demo clinic: Riverside Family Clinic, its admin, three patients and their lab orders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clinic_settings import ClinicProfile
from bot.db import utcnow
from bot.labs.models import LabOrder, LabStatus
from bot.patients.models import Patient
from bot.staff import audit
from bot.staff.models import CannedReply, Role, StaffUser
from bot.staff.passwords import hash_password, verify_password

DEMO_ADMIN_EMAIL = "admin@riverside.example"
# A demo-only credential, printed by `make run`; real clinics create staff with `clinicbot staff add`.
DEMO_ADMIN_PASSWORD = "riverside-demo"  # noqa: S105

# Everyone on the demo team signs in with the demo password.
DEMO_STAFF = (
    (DEMO_ADMIN_EMAIL, "Dana Reyes", Role.ADMIN),
    ("sam@riverside.example", "Sam Lee", Role.STAFF),
    ("priya@riverside.example", "Priya Patel", Role.CLINICIAN),
)

DEMO_PATIENTS = (
    # external id, name, preferred name, date of birth, phone, language
    ("RFC-1001", "Maria Garcia", "Maria", date(1984, 3, 14), "+16175550101", "es"),
    ("RFC-1002", "James Wilson", "Jim", date(1957, 11, 2), "+16175550142", "en"),
    ("RFC-1003", "Aisha Khan", None, date(1996, 7, 30), "+16175550177", "en"),
)


@dataclass(frozen=True)
class SeedReport:
    """What seeding created this time (zeros on a second run)."""

    clinic: int
    staff: int
    patients: int
    lab_orders: int


def demo_profile() -> ClinicProfile:
    """Return the demo clinic's settings."""
    weekday = "08:00-18:00"
    return ClinicProfile(
        name="Riverside Family Clinic",
        phone="+1 (617) 555-0100",
        address="120 Riverside Ave, Cambridge, MA 02139",
        portal_url="https://portal.riverside-clinic.example",
        timezone="America/New_York",
        weekly_hours={"mon": weekday, "tue": weekday, "wed": weekday, "thu": weekday, "fri": weekday},
        holiday_country="US",
        holiday_subdivision=None,
        closures=[],
        daily_update_time="16:00",
        quiet_start="08:00",
        quiet_end="20:00",
        emergency_number="911",
        crisis_line="988",
    )


def accounts_with_demo_password(session: Session, emails: tuple[str, ...] | None = None) -> list[str]:
    """Return the emails of the demo team's active accounts (or of `emails`) that still sign in with the published password."""
    emails = emails or tuple(email for email, _, _ in DEMO_STAFF)
    users = session.scalars(
        select(StaffUser).where(StaffUser.email.in_(emails), StaffUser.disabled_at.is_(None)).order_by(StaffUser.id)
    ).all()
    return [user.email for user in users if verify_password(user.password_hash, DEMO_ADMIN_PASSWORD)]


def demo_admin_password() -> str | None:
    """Return the demo admin's password while the demo admin still uses it, for `make run` to print."""
    from bot.db import read_scope

    with read_scope() as session:
        return DEMO_ADMIN_PASSWORD if accounts_with_demo_password(session, (DEMO_ADMIN_EMAIL,)) else None


DEMO_CANNED_REPLIES = (
    # title, English, Spanish; placeholders are filled per patient when staff insert the text.
    # Never what a result says: texts sit on lock screens and shared phones (see bot.staff.outgoing).
    (
        "Results reviewed: see the portal",
        "Hi {patient_name}, this is {staff_name} at {clinic_name}. The doctor has reviewed your results. You can "
        "see them in the patient portal, or call us at {clinic_phone} and we will go over them with you.",
        "Hola {patient_name}, soy {staff_name} de {clinic_name}. El médico revisó sus resultados. Puede verlos en "
        "el portal del paciente, o llámenos al {clinic_phone} y los revisamos con usted.",
    ),
    (
        "Call us to book",
        "Hi {patient_name}, please call us at {clinic_phone} so we can find an appointment time that works "
        "for you. {staff_name}, {clinic_name}",
        "Hola {patient_name}, llámenos al {clinic_phone} para buscar una cita que le convenga. "
        "{staff_name}, {clinic_name}",
    ),
    (
        "Refill sent to pharmacy",
        "Hi {patient_name}, your refill has been sent to your pharmacy. It is usually ready within one working "
        "day. {staff_name}, {clinic_name}",
        "Hola {patient_name}, enviamos su receta a su farmacia. Normalmente está lista en un día hábil. "
        "{staff_name}, {clinic_name}",
    ),
)


def seed_canned_replies(session: Session) -> int:
    """Add the demo clinic's approved replies that are missing; return how many were added."""
    added = 0
    for title, body_en, body_es in DEMO_CANNED_REPLIES:
        if session.scalars(select(CannedReply.id).where(CannedReply.title == title)).first() is None:
            session.add(CannedReply(title=title, body_en=body_en, body_es=body_es, active=True))
            added += 1
    return added


def seed_lab_promises(session: Session, *, order_ids: list[str]) -> None:
    """Give each demo lab order its lab-result promise (also for demo databases seeded before promises)."""
    from bot.labs.flows import ensure_lab_promise
    from bot.patients.models import Channel, ChannelIdentity

    session.flush()
    for order in session.scalars(select(LabOrder).where(LabOrder.order_id.in_(order_ids))):
        # Use an SMS identity the patient already has; the demo creates none, so updates pick the channel.
        identity_id = session.scalars(
            select(ChannelIdentity.id).where(
                ChannelIdentity.channel == Channel.SMS, ChannelIdentity.patient_id == order.patient_id
            )
        ).first()
        ensure_lab_promise(session=session, order=order, identity_id=identity_id)


def do_seed_demo(*, session: Session) -> SeedReport:
    """Create whatever part of the demo clinic is missing; safe to run again."""
    created = {"clinic": 0, "staff": 0, "patients": 0, "lab_orders": 0}
    if session.scalars(select(ClinicProfile).limit(1)).first() is None:
        session.add(demo_profile())
        created["clinic"] = 1
    demo_hash: str | None = None  # argon2id is slow on purpose: one hash serves the demo accounts' shared password
    for email, name, role in DEMO_STAFF:
        if session.scalars(select(StaffUser).where(StaffUser.email == email)).first() is None:
            demo_hash = demo_hash or hash_password(DEMO_ADMIN_PASSWORD)
            session.add(StaffUser(email=email, name=name, role=role, password_hash=demo_hash))
            created["staff"] += 1
    patients: dict[str, Patient] = {}
    for external_id, name, preferred, dob, phone, lang in DEMO_PATIENTS:
        patient = session.scalars(select(Patient).where(Patient.external_id == external_id)).first()
        if patient is None:
            patient = Patient(
                external_id=external_id,
                name=name,
                preferred_name=preferred,
                date_of_birth=dob,
                phone=phone,
                language=lang,
            )
            session.add(patient)
            created["patients"] += 1
        patients[external_id] = patient
    session.flush()
    now = utcnow()
    orders = (
        # order id, patient, test (staff-only), ordered days ago, expected in days, status
        ("DEMO-LAB-1", "RFC-1001", "Hemoglobin A1c", 2, 2, LabStatus.IN_LAB),
        ("DEMO-LAB-2", "RFC-1002", "Lipid panel", 6, -1, LabStatus.IN_LAB),
        ("DEMO-LAB-3", "RFC-1002", "Basic metabolic panel", 5, -2, LabStatus.RESULTED),
        ("DEMO-LAB-4", "RFC-1003", "Complete blood count", 1, 3, LabStatus.COLLECTED),
    )
    for order_id, external_id, test, ago, expected_in, status in orders:
        if session.scalars(select(LabOrder).where(LabOrder.order_id == order_id)).first() is not None:
            continue
        ordered_at = now - timedelta(days=ago)
        session.add(
            LabOrder(
                order_id=order_id,
                patient_id=patients[external_id].id,
                test_name=test,
                ordered_at=ordered_at,
                expected_by=now + timedelta(days=expected_in),
                status=status,
                resulted_at=now - timedelta(days=1) if status == LabStatus.RESULTED else None,
            )
        )
        created["lab_orders"] += 1
    seed_lab_promises(session, order_ids=[order[0] for order in orders])
    canned = seed_canned_replies(session)
    if any(created.values()) or canned:
        audit.record(session=session, actor_kind="cli", action="demo.seeded", details=dict(created))
    return SeedReport(**created)


class DemoPhoneError(Exception):
    """The demo phone cannot show this number's texts; the message says why."""


@dataclass(frozen=True)
class DemoText:
    """A text the demo clinic queued for a demo patient's phone, which nothing delivers."""

    queued_at: datetime
    body: str


def demo_phone_texts(*, session: Session, phone: str, sms_on: bool) -> list[DemoText]:
    """Return the SMS texts waiting for one demo patient's phone, oldest first; audited.

    With SMS off (no Twilio credentials, as `make run` starts) a text to a patient's phone, such as
    the web chat's one-time code, waits in the outbox. This shows it for the demo patients only, so a
    newcomer can finish the web chat's verification; a real patient's texts are never shown here.
    """
    from bot.channels.models import OutboxMessage, OutboxStatus
    from bot.patients.models import ChannelIdentity

    if sms_on:
        raise DemoPhoneError("SMS is on: Twilio delivers texts to this number, so none wait here")
    demo = {number: external_id for external_id, _, _, _, number, _ in DEMO_PATIENTS}
    if phone not in demo:
        raise DemoPhoneError(f"{phone} is not a demo patient's phone ({', '.join(demo)})")
    patient = session.scalars(
        select(Patient).where(Patient.external_id == demo[phone], Patient.phone == phone)
    ).first()
    if patient is None:
        raise DemoPhoneError("the demo clinic is not set up here (clinicbot init --demo)")
    rows = session.execute(
        select(OutboxMessage.created_at, OutboxMessage.body)
        .join(ChannelIdentity, ChannelIdentity.id == OutboxMessage.identity_id)
        .where(ChannelIdentity.channel == "sms", ChannelIdentity.address == phone,
               OutboxMessage.status == OutboxStatus.PENDING)  # fmt: skip
        .order_by(OutboxMessage.id)
    ).all()
    audit.record(session=session, actor_kind="cli", action="demo.phone_read", subject_type="patient",
                 subject_id=patient.id, patient_id=patient.id, details={"texts": len(rows)})  # fmt: skip
    return [DemoText(created_at, body or "") for created_at, body in rows]
