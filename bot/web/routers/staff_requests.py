"""Staff pages for refill and appointment requests: the list, one request, and its answer to the patient."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.conversations.models import RequestStatus
from bot.db import session_scope, utcnow
from bot.staff import audit, requests
from bot.staff.auth import Principal
from bot.web.deps import RuntimeDep, WorkersDep
from bot.web.routers.staff_cases import age_text, local_clock
from bot.web.staff_deps import Staff, page, staff_router

router = staff_router()

KIND_LABELS = {"refill": "Refill", "appointment": "Appointment"}
ACTION_LABELS = {"book": "book", "reschedule": "reschedule", "cancel": "cancel"}
STATUS_LABELS = {RequestStatus.OPEN: "Open", RequestStatus.DONE: "Done", RequestStatus.DECLINED: "Could not be done",
                 RequestStatus.CANCELLED: "Closed with the chat"}  # fmt: skip
NOTICES = {"answered": "The answer is on its way to the patient, and the request is closed."}


def _label(kind: str, action: str | None) -> str:
    label = KIND_LABELS.get(kind, kind.capitalize())
    return f"{label} ({ACTION_LABELS.get(action, action)})" if action else label


@router.get("/requests", response_class=HTMLResponse)
def request_list(request: Request, staff: Staff, view: str = "open", done: str = "") -> Response:
    """List open requests, the soonest due first (overdue ones passed the time the patient was promised)."""
    answered = view == "answered"
    now = utcnow()
    with session_scope() as session:
        local = local_clock(session)
        rows = [
            {"id": row.id, "what": _label(row.kind, row.action), "details": row.details, "patient": row.patient_label,
             "channel": row.channel, "age": age_text(row.created_at, now), "due": local(row.due_at),
             "overdue": row.overdue, "status": STATUS_LABELS.get(row.status, row.status),
             "completed": local(row.completed_at), "conversation_id": row.conversation_id}
            for row in requests.list_requests(session=session, staff=staff, answered=answered, now=now)
        ]  # fmt: skip
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="requests.listed",
                     details={"view": "answered" if answered else "open", "count": len(rows)})  # fmt: skip
    context = {"nav": "requests", "rows": rows, "view": "answered" if answered else "open", "notice": NOTICES.get(done)}
    return page(request, "staff/requests.html", context)


def _show(request: Request, staff: Principal, runtime: Any, request_id: int, *, error: str | None = None,
          typed: dict[str, str] | None = None, status_code: int = 200) -> Response:  # fmt: skip
    with session_scope() as session:
        try:
            item, conversation = requests.get_request(session=session, request_id=request_id, staff=staff)
        except requests.RequestError as refused:
            raise HTTPException(status_code=refused.status, detail=str(refused)) from None
        local = local_clock(session)
        is_open = item.status == RequestStatus.OPEN
        drafts = {
            outcome: (typed or {}).get(outcome) or requests.answer_draft(
                session=session, domain=runtime.domain, request=item, conversation=conversation, staff=staff,
                outcome=outcome)
            for outcome in requests.OUTCOMES
        } if is_open else {}  # fmt: skip
        answer = None if is_open else requests.answered_by(session=session, request_id=item.id)
        patient_id = audit.patient_of(session, conversation)
        context = {
            "nav": "requests", "item": item, "what": _label(item.kind, item.action), "details": dict(item.details or {}),
            "status": STATUS_LABELS.get(item.status, item.status), "is_open": is_open, "conversation": conversation,
            "requested": local(item.created_at), "due": local(item.due_at), "completed": local(item.completed_at),
            "overdue": is_open and item.due_at < utcnow(), "drafts": drafts, "answer": answer, "error": error,
            "guarded": conversation.channel in {"sms", "telegram"},
        }  # fmt: skip
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="request.viewed",
                     subject_type="request", subject_id=item.id, patient_id=patient_id)  # fmt: skip
    return page(request, "staff/request.html", context, status_code=status_code)


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: int, staff: Staff, runtime: RuntimeDep) -> Response:
    """Show a request, with a draft answer for each outcome."""
    return _show(request, staff, runtime, request_id)


@router.post("/requests/{request_id}/answer", response_class=HTMLResponse)
def answer_request(
    request: Request,
    request_id: int,
    staff: Staff,
    runtime: RuntimeDep,
    workers: WorkersDep,
    outcome: Annotated[str, Form(max_length=16)] = "",
    message: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    """Send the patient the answer, keep the promised answer time and close the request; once."""
    try:
        with session_scope() as session:
            requests.do_answer_request(session=session, request_id=request_id, staff=staff, outcome=outcome,
                                       message=message)  # fmt: skip
    except requests.RequestError as refused:
        with session_scope() as session:
            audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="request.answered",
                         subject_type="request", subject_id=request_id, outcome=refused.outcome)  # fmt: skip
        if refused.status == 400:
            # Keep what was typed, beside the reason.
            return _show(request, staff, runtime, request_id, error=str(refused), typed={outcome: message},
                         status_code=400)  # fmt: skip
        raise HTTPException(status_code=refused.status, detail=str(refused)) from None
    workers.notify_outbox()
    return RedirectResponse("/staff/requests?done=answered", status_code=303)
