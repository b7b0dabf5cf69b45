"""The lab REST API: bearer keys, validation errors that name the field, idempotency, forward-only PATCH."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, text, update

from bot.config import REPO_ROOT
from bot.db import make_engine, session_scope
from bot.labs.apikeys import do_revoke_key
from bot.labs.models import ApiKey, LabMessage, LabOrder
from bot.promises.models import Promise
from bot.staff.models import AuditEvent
from tests.labs.conftest import LabApi, order_body

ORDERS = "/api/v1/lab-orders"


def test_create_then_repeat_then_conflict(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    created = client.post(ORDERS, json=order_body(), headers=headers)
    repeated = client.post(ORDERS, json=order_body(), headers=headers)
    # The same instants written with another offset are the same body.
    same_instant = client.post(ORDERS, json=order_body(expected_by="2026-11-25T17:00:00Z"), headers=headers)
    differs = client.post(ORDERS, json=order_body(test_name="Lipid panel", **{"patient.phone": "+16175550198"}),
                          headers=headers)  # fmt: skip
    assert (created.status_code, repeated.status_code, same_instant.status_code) == (201, 200, 200)
    assert created.json() == {
        "order_id": "ACME-1001",
        "status": "ordered",
        "test_name": "Thyroid panel",
        "ordered_at": "2026-11-20T14:30:00Z",
        "expected_by": "2026-11-25T17:00:00Z",
        "resulted_at": None,
    }
    assert repeated.json() == created.json()
    assert differs.status_code == 409
    assert [p["field"] for p in differs.json()["detail"]] == ["patient.phone", "test_name"]
    with session_scope() as session:
        orders = session.scalars(select(LabOrder.order_id).where(LabOrder.order_id == "ACME-1001")).all()
        actions = session.execute(
            select(AuditEvent.action, AuditEvent.actor_kind, AuditEvent.actor_id).where(
                AuditEvent.action.like("lab_order.%")
            )
        ).all()
    assert orders == ["ACME-1001"]
    assert [tuple(a) for a in actions] == [("lab_order.created", "api", str(lab_api.key_id))]


def test_an_order_for_a_patient_on_file_with_other_details_is_a_409_naming_the_field(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    jims_phone = client.post(
        ORDERS,
        json=order_body(**{"patient.phone": "+16175550142", "patient.name": "Someone Else",
                           "patient.date_of_birth": "1990-01-01", "patient.external_id": None}),
        headers=headers,
    )  # fmt: skip
    first = client.post(ORDERS, json=order_body(), headers=headers)
    reused_id = client.post(
        ORDERS,
        json=order_body(order_id="ACME-1002", **{"patient.phone": "+16175550166", "patient.name": "Ann Other",
                                                 "patient.date_of_birth": "1970-03-03"}),
        headers=headers,
    )  # fmt: skip
    by_phone = "differs from the patient on file with this phone number"
    assert (jims_phone.status_code, jims_phone.json()) == (
        409,
        {"detail": [{"field": "patient.name", "problem": by_phone},
                    {"field": "patient.date_of_birth", "problem": by_phone}]},
    )  # fmt: skip
    assert first.status_code == 201
    assert (reused_id.status_code, reused_id.json()) == (
        409,
        {"detail": [{"field": "patient.date_of_birth",
                     "problem": "differs from the patient on file with this external_id"}]},
    )  # fmt: skip
    with session_scope() as session:
        orders = session.scalars(select(LabOrder.order_id).where(LabOrder.order_id.like("ACME-%"))).all()
    assert orders == ["ACME-1001"]


def test_get_returns_the_order_and_404_for_unknown(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    client.post(ORDERS, json=order_body(), headers=headers)
    found = client.get(f"{ORDERS}/ACME-1001", headers=headers)
    missing = client.get(f"{ORDERS}/ACME-404", headers=headers)
    assert (found.status_code, found.json()["status"], found.json()["test_name"]) == (
        200,
        "ordered",
        "Thyroid panel",
    )
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": [{"field": "order_id", "problem": "no lab order has this order_id"}]},
    )


def test_patch_moves_forward_only(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    client.post(ORDERS, json=order_body(), headers=headers)
    steps = [client.patch(f"{ORDERS}/ACME-1001", json={"status": status}, headers=headers)
             for status in ("collected", "in_lab", "in_lab", "resulted")]  # fmt: skip
    backwards = client.patch(f"{ORDERS}/ACME-1001", json={"status": "collected"}, headers=headers)
    unknown = client.patch(f"{ORDERS}/ACME-404", json={"status": "resulted"}, headers=headers)
    assert [s.status_code for s in steps] == [200, 200, 200, 200]
    assert steps[-1].json()["status"] == "resulted" and steps[-1].json()["resulted_at"] is not None
    assert backwards.status_code == 409
    assert backwards.json()["detail"][0]["field"] == "status"
    assert unknown.status_code == 404
    with session_scope() as session:
        promise = session.scalars(select(Promise).where(Promise.kind == "lab_result", Promise.reason_key == "lab_not_back",
                                                        Promise.subject_id == select(LabOrder.id).where(LabOrder.order_id == "ACME-1001").scalar_subquery())).one()  # fmt: skip
        updates = session.scalars(
            select(LabMessage.message_type).where(LabMessage.source == "rest").order_by(LabMessage.id)
        ).all()
    assert promise.status == "kept"
    assert updates == ["order.create", "order.update", "order.update", "order.update"]


def test_patch_expected_by_moves_the_promise(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    client.post(ORDERS, json=order_body(), headers=headers)
    moved = client.patch(
        f"{ORDERS}/ACME-1001", json={"expected_by": "2026-11-27T12:00:00-05:00"}, headers=headers
    )
    too_early = client.patch(
        f"{ORDERS}/ACME-1001", json={"expected_by": "2026-11-19T12:00:00-05:00"}, headers=headers
    )
    assert (moved.status_code, moved.json()["expected_by"]) == (200, "2026-11-27T17:00:00Z")
    assert (too_early.status_code, too_early.json()["detail"][0]["field"]) == (422, "expected_by")
    with session_scope() as session:
        due = session.scalars(
            select(Promise.due_at).where(Promise.reason_key == "lab_not_back").order_by(Promise.id.desc())
        ).first()
    assert due == datetime(2026, 11, 27, 17, 0, tzinfo=UTC)


# (change to a valid body, the field named, the problem stated)
BAD_FIELDS = [
    (
        {"patient.phone": "617-555-0199"},
        "patient.phone",
        "must be an E.164 phone number such as +16175550101",
    ),
    ({"patient.phone": "+1555"}, "patient.phone", "must be an E.164 phone number such as +16175550101"),
    ({"patient.phone": "+16170000000"}, "patient.phone", "is not a valid phone number"),
    ({"patient.date_of_birth": "17/05/1990"}, "patient.date_of_birth", "must be a date written YYYY-MM-DD"),
    ({"patient.date_of_birth": "1990-02-30"}, "patient.date_of_birth", "is not a real calendar date"),
    ({"patient.date_of_birth": "2999-01-01"}, "patient.date_of_birth", "must not be in the future"),
    ({"patient.name": ...}, "patient.name", "is required"),
    ({"patient.name": "   "}, "patient.name", "must not be empty"),
    (
        {"ordered_at": "2026-11-20T09:30:00"},
        "ordered_at",
        "must include a UTC offset or Z, e.g. 2026-11-25T12:00:00-05:00",
    ),
    (
        {"ordered_at": "yesterday"},
        "ordered_at",
        "must be an ISO 8601 date-time such as 2026-11-25T12:00:00-05:00",
    ),
    ({"expected_by": "2026-11-19T12:00:00-05:00"}, "expected_by", "must not be earlier than ordered_at"),
    (
        {"order_id": "has space"},
        "order_id",
        "must be 1-64 letters, digits or . _ : # - (starting with a letter or digit)",
    ),
    ({"test_name": 42}, "test_name", "must be a string"),
    ({"colour": "blue"}, "colour", "is not a known field"),
    ({"patient": "Rosa"}, "patient", "must be a JSON object"),
]


def test_validation_errors_name_the_field(lab_api: LabApi) -> None:
    answers = [
        (lab_api.client.post(ORDERS, json=order_body(**changes), headers=lab_api.headers()), field, problem)
        for changes, field, problem in BAD_FIELDS
    ]
    actual = [(response.status_code, response.json()) for response, _, _ in answers]
    expected = [(422, {"detail": [{"field": field, "problem": problem}]}) for _, field, problem in answers]
    assert actual == expected


def test_every_bad_field_is_listed_and_bad_json_is_named(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    several = client.post(
        ORDERS, json=order_body(**{"patient.phone": "x", "expected_by": ...}), headers=headers
    )
    not_json = client.post(
        ORDERS, content=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    bad_status = client.patch(f"{ORDERS}/ACME-1001", json={"status": "ordered"}, headers=headers)
    empty_patch = client.patch(f"{ORDERS}/ACME-1001", json={}, headers=headers)
    assert [p["field"] for p in several.json()["detail"]] == ["patient.phone", "expected_by"]
    assert (not_json.status_code, not_json.json()) == (
        422,
        {"detail": [{"field": "body", "problem": "is not valid JSON"}]},
    )
    assert bad_status.json() == {
        "detail": [
            {"field": "status", "problem": "must be one of 'collected', 'in_lab', 'resulted', 'cancelled'"}
        ]
    }
    assert empty_patch.json() == {"detail": [{"field": "body", "problem": "give status or expected_by"}]}


def test_times_near_the_calendar_limits_are_out_of_range_not_a_server_error(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    early = client.post(ORDERS, json=order_body(ordered_at="0001-01-01T00:00:00+14:00"), headers=headers)
    late = client.post(ORDERS, json=order_body(expected_by="9999-12-31T23:00:00-14:00"), headers=headers)
    old = client.post(ORDERS, json=order_body(ordered_at="1899-12-31T23:00:00Z"), headers=headers)
    client.post(ORDERS, json=order_body(), headers=headers)
    patched = client.patch(
        f"{ORDERS}/ACME-1001", json={"expected_by": "9999-12-31T23:59:00-12:00"}, headers=headers
    )
    answers = [(r.status_code, r.json()) for r in (early, late, old, patched)]
    out_of_range = "must be between the years 1900 and 2200"
    assert answers == [
        (422, {"detail": [{"field": "ordered_at", "problem": out_of_range}]}),
        (422, {"detail": [{"field": "expected_by", "problem": out_of_range}]}),
        (422, {"detail": [{"field": "ordered_at", "problem": out_of_range}]}),
        (422, {"detail": [{"field": "expected_by", "problem": out_of_range}]}),
    ]


def test_nul_and_lone_surrogates_in_text_fields_are_a_422_naming_the_field(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    cases = [
        ({"patient.name": "Rosa\u0000Diaz"}, "patient.name", "must not contain NUL characters"),
        ({"test_name": "Thyroid\u0000"}, "test_name", "must not contain NUL characters"),
        ({"patient.external_id": "RFC\u00002001"}, "patient.external_id", "must not contain NUL characters"),
        ({"order_id": "ACME\u00001"}, "order_id",
         "must be 1-64 letters, digits or . _ : # - (starting with a letter or digit)"),
        ({"patient.name": "Rosa \ud800"}, "patient.name",
         "must be valid Unicode text (it holds an unpaired surrogate)"),
    ]  # fmt: skip
    # json.dumps writes a lone surrogate as a \u escape, as a lab system's JSON encoder would.
    responses = [client.post(ORDERS, content=json.dumps(order_body(**changes)).encode(),
                             headers={**headers, "Content-Type": "application/json"}) for changes, _, _ in cases]  # fmt: skip
    answers = [(response.status_code, response.json()) for response in responses]
    assert answers == [
        (422, {"detail": [{"field": field, "problem": problem}]}) for _, field, problem in cases
    ]
    with session_scope() as session:
        assert session.scalars(select(LabOrder).where(LabOrder.order_id == "ACME-1001")).first() is None


def test_missing_bad_and_revoked_keys_get_401(lab_api: LabApi) -> None:
    client = lab_api.client
    missing = client.get(f"{ORDERS}/ACME-1001")
    basic = client.get(f"{ORDERS}/ACME-1001", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    wrong = client.get(f"{ORDERS}/ACME-1001", headers=lab_api.headers(lab_api.key[:-2] + "xx"))
    with session_scope() as session:
        do_revoke_key(session=session, name="acme-lab")
    revoked = client.post(ORDERS, json=order_body(), headers=lab_api.headers())
    assert [r.status_code for r in (missing, basic, wrong, revoked)] == [401, 401, 401, 401]
    assert [r.headers["WWW-Authenticate"] for r in (missing, wrong, revoked)] == [
        "Bearer", 'Bearer error="invalid_token"', 'Bearer error="invalid_token"']  # fmt: skip
    with session_scope() as session:
        assert session.scalars(select(LabOrder).where(LabOrder.order_id == "ACME-1001")).first() is None


def test_last_used_is_written_at_most_once_a_minute(lab_api: LabApi) -> None:
    client, headers = lab_api.client, lab_api.headers()
    client.get(f"{ORDERS}/X", headers=headers)
    with session_scope() as session:
        first = session.scalars(select(ApiKey.last_used_at)).one()
    client.get(f"{ORDERS}/X", headers=headers)
    with session_scope() as session:
        second = session.scalars(select(ApiKey.last_used_at)).one()
        session.execute(update(ApiKey).values(last_used_at=first - timedelta(minutes=2)))
    client.get(f"{ORDERS}/X", headers=headers)
    with session_scope() as session:
        third = session.scalars(select(ApiKey.last_used_at)).one()
    assert first is not None and second == first
    assert third > first


def test_openapi_and_docs_page_are_served_locally(lab_api: LabApi) -> None:
    schema = lab_api.client.get("/api/v1/openapi.json")
    docs = lab_api.client.get("/api/v1/docs")
    assert schema.status_code == 200
    assert sorted(schema.json()["paths"]) == ["/lab-orders", "/lab-orders/{order_id}"]
    assert schema.json()["servers"] == [{"url": "/api/v1"}]
    assert "HTTPBearer" in schema.json()["components"]["securitySchemes"]
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    page = docs.text
    assert "<code>POST /api/v1/lab-orders</code>" in page and "<code>patient.phone</code>" in page
    assert "http://" not in page and "https://" not in page  # nothing loads from elsewhere
    # Only the lab API's own schema: the whole app's would list every staff and admin route to anyone.
    assert lab_api.client.get("/openapi.json").status_code == 404


def _clinicbot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, cwd=REPO_ROOT,
                          env={**os.environ, **env}, timeout=120, check=False)  # fmt: skip


def test_apikey_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path, model_dir: Path) -> None:
    env = {"CLINICBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "CLINICBOT_DATA_DIR": str(model_dir)}
    assert _clinicbot("init", env=env).returncode == 0
    created = _clinicbot("apikey", "create", "--name", "acme-lab", env=env)
    assert created.returncode == 0, created.stderr.decode()
    key = created.stdout.decode().strip()
    assert key.startswith("cbk_") and len(key) > 40 and "\n" not in key
    assert "not shown again" in created.stderr.decode()
    listed = _clinicbot("apikey", "list", env=env)
    again = _clinicbot("apikey", "create", "--name", "acme-lab", env=env)
    revoked = _clinicbot("apikey", "revoke", "--name", "acme-lab", env=env)
    ghost = _clinicbot("apikey", "revoke", "--name", "ghost", env=env)
    assert key not in listed.stdout.decode() and key[:12] in listed.stdout.decode()
    assert (again.returncode, again.stderr.decode().count("\n")) == (2, 1)
    assert "already exists" in again.stderr.decode()
    assert (revoked.returncode, ghost.returncode) == (0, 2)
    engine = make_engine(env["CLINICBOT_DATABASE_URL"])
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT name, key_hash, prefix, revoked_at IS NOT NULL FROM api_key")
        ).all()
        dump = "\n".join(connection.connection.iterdump())  # type: ignore[attr-defined]
    engine.dispose()
    assert [tuple(row) for row in stored] == [
        ("acme-lab", hashlib.sha256(key.encode()).hexdigest(), key[:12], True)
    ]
    assert key not in dump
