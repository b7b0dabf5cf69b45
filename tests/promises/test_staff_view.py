"""The staff promises page: due today, late, escalated, call list; per-promise timelines; role rules."""

from __future__ import annotations

from datetime import date

import time_machine
from sqlalchemy import select

from bot.db import session_scope
from bot.labs.models import LabOrder, LabStatus
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.promises.sweeps import SweepCounts
from bot.staff.models import AuditEvent
from tests.channels.conftest import make_app  # noqa: F401
from tests.promises.factories import (
    clear_demo_orders,
    local,
    make_identity,
    make_lab_promise,
    make_patient,
    make_promise,
)
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in

TUESDAY = date(2026, 12, 1)


def section(html: str, name: str) -> str:
    return html.split(f'<section class="card" id="{name}"')[1].split("</section>")[0]


def test_promises_page_lists_and_timelines(make_app, sweep) -> None:  # noqa: F811
    harness = make_app()
    with session_scope() as session:
        clear_demo_orders(session)
        rosa = make_lab_promise(session, due_at=local(date(2026, 11, 30), 12), name="Rosa Diaz")
        make_lab_promise(session, due_at=local(date(2026, 11, 25), 12), name="Omar Haddad")
        make_lab_promise(session, due_at=local(date(2026, 11, 30), 12), name="Lena Park", opted_out=True)
        make_lab_promise(session, due_at=local(TUESDAY, 18), name="Ivy Chen")
        secret = make_patient(session, name="Mo Secret")
        medical = make_promise(session, due_at=local(date(2026, 11, 30), 12), reason_key="handoff_medical",
                               kind=PromiseKind.HANDOFF_REPLY, patient=secret, identity=make_identity(session, secret))  # fmt: skip
        order_id = session.get(LabOrder, rosa.order_id).order_id
    assert sweep(local(TUESDAY, 16, 30)) == SweepCounts(updates=3, call_list=1, escalations=1)

    with time_machine.travel(local(TUESDAY, 17)):
        sign_in(harness.client)
        html = harness.client.get("/staff/promises").text
        assert "Ivy Chen" in section(html, "due_today")
        late = section(html, "late")
        assert (
            "Rosa Diaz" in late and "Lena Park" in late and "Mo Secret" in late and "Omar Haddad" not in late
        )
        assert "Omar Haddad" in section(html, "escalated")
        assert "Lena Park" in section(html, "call_list") and "Rosa Diaz" not in section(html, "call_list")
        assert 'href="/staff/promises" aria-current="page">Promises</a>' in html

        redirect = harness.client.get(f"/staff/promises/lab-orders/{order_id}", follow_redirects=False)
        assert (redirect.status_code, redirect.headers["location"]) == (
            303,
            f"/staff/promises/{rosa.promise_id}",
        )
        timeline = harness.client.get(f"/staff/promises/{rosa.promise_id}").text
        assert "Late update sent" in timeline and "by sms" in timeline
        assert "Your lab results haven&#39;t come back from the lab yet." in timeline
        assert "Hemoglobin A1c" in timeline  # staff may see the test; patients never do

        harness.client.cookies.clear()
        sign_in(harness.client, DEMO_STAFF_EMAIL)
        assert "Mo Secret" not in harness.client.get("/staff/promises").text
        assert harness.client.get(f"/staff/promises/{medical}").status_code == 404
        harness.client.cookies.clear()
        sign_in(harness.client, DEMO_CLINICIAN_EMAIL)
        assert harness.client.get(f"/staff/promises/{medical}").status_code == 200

    with session_scope() as session:
        viewed = session.execute(
            select(AuditEvent.action, AuditEvent.patient_id).where(AuditEvent.action.like("promise%"))
        ).all()
    assert ("promise.viewed", rosa.patient_id) in [tuple(v) for v in viewed]
    assert ("promises.viewed", None) in [tuple(v) for v in viewed]


def test_the_call_list_says_why_to_call_results_in_not_the_promises_not_back(make_app, sweep) -> None:  # noqa: F811
    harness = make_app()
    with session_scope() as session:
        clear_demo_orders(session)
        lena = make_lab_promise(session, due_at=local(TUESDAY, 12), name="Lena Park", opted_out=True)
        order = session.get(LabOrder, lena.order_id)
        order.status, order.resulted_at = LabStatus.RESULTED, local(TUESDAY, 9)
        promise = session.get(Promise, lena.promise_id)
        promise.status, promise.kept_at = PromiseStatus.KEPT, local(TUESDAY, 9)
    assert sweep(local(TUESDAY, 10)) == SweepCounts(call_list=1)
    with time_machine.travel(local(TUESDAY, 11)):
        sign_in(harness.client)
        calls = section(harness.client.get("/staff/promises").text, "call_list")
    assert "Lena Park" in calls
    assert "Results in; patient not told" in calls and "Lab result not back" not in calls
