"""Side effects on promises that reach the patient: closing a promise withdraws its stale updates."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from bot.promises import service
from bot.promises.models import Promise, PromiseStatus

log = logging.getLogger(__name__)


def do_close_promises(
    *, session: Session, promises: Iterable[Promise], status: PromiseStatus, at: datetime
) -> list[int]:
    """Keep or cancel the open ones among promises and withdraw their unsent late updates; return their ids.

    A late update says the clinic is still waiting ("your results haven't come back yet"); once the promise
    is kept or no longer applies, a copy still queued (the 16:00 batch being paced out, a retry in backoff)
    would contradict what the patient is told next, and a staff reply or results notice can overtake it.
    """
    closing = [promise for promise in promises if promise.status == PromiseStatus.OPEN]
    for promise in closing:
        promise.status = status
        if status == PromiseStatus.KEPT:
            promise.kept_at = at
    ids = [promise.id for promise in closing]
    withdrawn = service.cancel_unsent_updates(session=session, promise_ids=ids, reason=f"promise_{status}")
    if withdrawn:
        log.info("promises %s %s: %s queued late updates withdrawn", ids, status, withdrawn)
    return ids
