"""Fixtures for lab intake: the real app with an API key, and HL7 messages as labs send them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from bot.db import session_scope
from bot.labs.apikeys import do_create_key
from tests.channels.conftest import AppHarness, make_app  # noqa: F401  (fixture shared with channel tests)


@dataclass
class LabApi:
    """A client of the lab API and the key it authenticates with."""

    client: TestClient
    key: str
    key_id: int

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Return the Authorization header for this key (or another)."""
        return {"Authorization": f"Bearer {key or self.key}"}


@pytest.fixture
def lab_api(make_app) -> LabApi:  # type: ignore[no-untyped-def]  # noqa: F811
    """The app on the demo clinic and a fresh API key."""
    harness: AppHarness = make_app()
    with session_scope() as session:
        row, key = do_create_key(session=session, name="acme-lab")
        key_id = row.id
    return LabApi(client=harness.client, key=key, key_id=key_id)


def order_body(**changes: object) -> dict[str, object]:
    """Return a valid POST /api/v1/lab-orders body, with changes applied (dotted keys reach into patient)."""
    body: dict[str, object] = {
        "order_id": "ACME-1001",
        "patient": {
            "phone": "+16175550199",
            "name": "Rosa Diaz",
            "date_of_birth": "1990-05-17",
            "external_id": "RFC-2001",
        },
        "test_name": "Thyroid panel",
        "ordered_at": "2026-11-20T09:30:00-05:00",
        "expected_by": "2026-11-25T12:00:00-05:00",
    }
    for key, value in changes.items():
        if key.startswith("patient."):
            patient = dict(body["patient"])  # type: ignore[arg-type]
            name = key.removeprefix("patient.")
            if value is ...:
                patient.pop(name, None)
            else:
                patient[name] = value
            body["patient"] = patient
        elif value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def hl7_message(*segments: str, sep: str = "\r") -> str:
    """Join segments the way a lab system sends them."""
    return sep.join(segments) + sep


def orm(
    control_id: str = "MSG-0001",
    *,
    order_id: str = "HL7-5001",
    pid: str | None = "PID|1||RFC-3001^^^RFC^MR||NGUYEN^LINH||19880212|F|||||(617) 555-0123",
    obr_extra: str = "",
    order_control: str = "NW",
    sep: str = "\r",
) -> str:
    """Return an ORM^O01 new-order message."""
    segments = [
        f"MSH|^~\\&|ACMELAB|ACME|CLINICBOT|RFC|20261120093000||ORM^O01|{control_id}|P|2.5",
        *([pid] if pid is not None else []),
        f"ORC|{order_control}|{order_id}|||||||20261120093000-0500",
        f"OBR|1|{order_id}||TSH^Thyroid stimulating hormone^L|||20261120093000-0500{obr_extra}",
    ]
    return hl7_message(*segments, sep=sep)


def oru(
    control_id: str = "MSG-0002", *, order_id: str = "HL7-5001", status: str = "F", pid: str | None = None
) -> str:
    """Return an ORU^R01 result message for an order."""
    segments = [
        f"MSH|^~\\&|ACMELAB|ACME|CLINICBOT|RFC|20261124150000||ORU^R01|{control_id}|P|2.5",
        *([pid] if pid is not None else []),
        f"OBR|1|{order_id}||TSH^Thyroid stimulating hormone^L|||20261120093000-0500||||||||||||||||||{status}",
        "OBX|1|NM|TSH^TSH^L||2.1|mIU/L|0.4-4.0|N|||F",
    ]
    return hl7_message(*segments)
