"""Issue 5's "done when": an order through the REST API, ticks across Thanksgiving, then its result."""

from __future__ import annotations

from datetime import date

import time_machine

from bot.cli import main
from bot.db import session_scope
from bot.labs.apikeys import do_create_key
from tests.promises.factories import clear_demo_orders, local

PHONE = "+16175550188"
ORDER = {
    "order_id": "LAB-2026-1125",
    "patient": {"phone": PHONE, "name": "Rosa Diaz", "date_of_birth": "1980-02-03", "external_id": "EXT-77"},
    "test_name": "Thyroid stimulating hormone",
    "ordered_at": "2026-11-23T09:00:00-05:00",
    "expected_by": "2026-11-25T12:00:00-05:00",
}


def tick(capsys, at: str) -> str:  # type: ignore[no-untyped-def]
    year, month, day = (int(part) for part in at[:10].split("-"))
    hour, minute = int(at[11:13]), int(at[14:16])
    with time_machine.travel(local(date(year, month, day), hour, minute)):
        assert main(["scheduler", "tick", "--at", at]) == 0
    return capsys.readouterr().out


def test_order_late_across_thanksgiving_then_resulted(sms_app, capsys) -> None:
    with session_scope() as session:
        clear_demo_orders(session)
        _, key = do_create_key(session=session, name="lab-feed")
    headers = {"Authorization": f"Bearer {key}"}
    with time_machine.travel(local(date(2026, 11, 23), 9, 5)):
        response = sms_app.client.post("/api/v1/lab-orders", json=ORDER, headers=headers)
    assert response.status_code == 201, response.text

    out = tick(capsys, "2026-11-25T16:30:00")
    assert "tick: 1 updates, 0 on the call list, 0 escalations, 0 results-ready; delivered 1" in out
    bodies = [m.body for m in sms_app.fake.messages_to(PHONE)]
    assert bodies == [
        "Hi Rosa, this is Riverside Family Clinic. Your lab results haven't come back from the lab yet. "
        "We'll update you by 4 pm on Friday."
    ]
    tick(capsys, "2026-11-25T16:45:00")
    assert len(sms_app.fake.messages_to(PHONE)) == 1
    tick(capsys, "2026-11-26T16:30:00")  # Thanksgiving
    assert len(sms_app.fake.messages_to(PHONE)) == 1
    tick(capsys, "2026-11-27T16:30:00")
    bodies = [m.body for m in sms_app.fake.messages_to(PHONE)]
    assert len(bodies) == 2 and bodies[1].endswith("We'll update you by 4 pm on Monday.")

    with time_machine.travel(local(date(2026, 11, 27), 17)):
        response = sms_app.client.patch(f"/api/v1/lab-orders/{ORDER['order_id']}", json={"status": "resulted"},
                                        headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text
    out = tick(capsys, "2026-11-27T17:05:00")
    assert "0 updates, 0 on the call list, 0 escalations, 1 results-ready; delivered 1" in out
    for day in ("2026-11-30", "2026-12-01", "2026-12-02"):
        tick(capsys, f"{day}T16:30:00")
    bodies = [m.body for m in sms_app.fake.messages_to(PHONE)]
    assert len(bodies) == 3
    assert bodies[2].startswith("Hi Rosa, this is Riverside Family Clinic. Your lab results are in.")
    assert not any("Thyroid" in body or "hormone" in body for body in bodies)
