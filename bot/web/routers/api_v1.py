"""The lab REST API under /api/v1: bearer-key auth, lab orders in, a local OpenAPI page.

It is a sub-application mounted at /api/v1 so that its validation errors have their own shape
({"detail": [{"field": …, "problem": …}]}) and its OpenAPI document lists only the lab API.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bot.db import session_scope, utcnow
from bot.labs.apikeys import authenticate
from bot.labs.flows import (
    LabInputError,
    LabOrderNotFound,
    LabStatusConflict,
    PatientConflict,
    PatientIn,
    UpsertOutcome,
    do_update_order,
    do_upsert_order,
    get_order,
)
from bot.labs.models import LabOrder, LabStatus
from bot.labs.validation import (
    check_birth_date,
    check_external_id,
    check_instant,
    check_order_id,
    check_phone,
    check_text,
)

log = logging.getLogger(__name__)

router = APIRouter()
bearer = HTTPBearer(auto_error=False, description="An API key from `clinicbot apikey create --name NAME`.")


# -- bodies ------------------------------------------------------------------------------------


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be {what}")
    return value


def _instant(value: Any) -> datetime:
    return check_instant(_string(value, "an ISO 8601 date-time string with a UTC offset"))


class PatientBody(BaseModel):
    """The patient the order is for."""

    model_config = ConfigDict(extra="forbid")

    phone: str = Field(description="Mobile number in E.164, e.g. +16175550101; lab updates go to it by SMS.")
    name: str = Field(description="Full name.", max_length=200)
    date_of_birth: date = Field(description="YYYY-MM-DD.")
    external_id: str | None = Field(default=None, description="The clinic's patient id (MRN), when known.")

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any) -> str:
        return check_phone(_string(value, "a string"))

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_text(_string(value, "a string"))

    @field_validator("date_of_birth", mode="before")
    @classmethod
    def _birth(cls, value: Any) -> date:
        return check_birth_date(_string(value, "a date written YYYY-MM-DD"), today=utcnow().date())

    @field_validator("external_id", mode="before")
    @classmethod
    def _external(cls, value: Any) -> str | None:
        return None if value is None else check_external_id(_string(value, "a string"))


class LabOrderCreate(BaseModel):
    """A new lab order; sending the same body again is safe."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(description="The lab's (placer) order id; unique.")
    patient: PatientBody
    test_name: str = Field(description="The lab's test name; never sent to the patient.")
    ordered_at: datetime = Field(description="ISO 8601 with a UTC offset.")
    expected_by: datetime = Field(description="When the result is expected; ISO 8601 with a UTC offset.")

    @field_validator("order_id", mode="before")
    @classmethod
    def _order_id(cls, value: Any) -> str:
        return check_order_id(_string(value, "a string"))

    @field_validator("test_name", mode="before")
    @classmethod
    def _test_name(cls, value: Any) -> str:
        return check_text(_string(value, "a string"))

    @field_validator("ordered_at", mode="before")
    @classmethod
    def _ordered_at(cls, value: Any) -> datetime:
        return _instant(value)

    @field_validator("expected_by", mode="before")
    @classmethod
    def _expected_by(cls, value: Any, info: ValidationInfo) -> datetime:
        expected_by = _instant(value)
        ordered_at = info.data.get("ordered_at")
        if isinstance(ordered_at, datetime) and expected_by < ordered_at:
            raise ValueError("must not be earlier than ordered_at")
        return expected_by


class LabOrderPatch(BaseModel):
    """A status change (forward only) and/or a new expected time."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["collected", "in_lab", "resulted", "cancelled"] | None = None
    expected_by: datetime | None = Field(default=None, description="ISO 8601 with a UTC offset.")

    @field_validator("expected_by", mode="before")
    @classmethod
    def _expected_by(cls, value: Any) -> datetime | None:
        return None if value is None else _instant(value)

    @model_validator(mode="after")
    def _something(self) -> LabOrderPatch:
        if self.status is None and self.expected_by is None:
            raise ValueError("give status or expected_by")
        return self


class LabOrderOut(BaseModel):
    """A lab order as the lab system sees it."""

    order_id: str
    status: str
    test_name: str
    ordered_at: datetime
    expected_by: datetime
    resulted_at: datetime | None


class Problem(BaseModel):
    """One thing wrong with a request, and where."""

    field: str
    problem: str


class Problems(BaseModel):
    """Why a request was refused."""

    detail: list[Problem]


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key."},
    422: {"model": Problems, "description": "A field is missing or invalid; each problem names its field."},
}


# -- auth ------------------------------------------------------------------------------------


def _unauthorized(detail: str, *, invalid: bool) -> HTTPException:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def api_key_id(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> int:
    """Return the id of the live API key the request presents, or answer 401."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("send Authorization: Bearer <API key>", invalid=False)
    with session_scope() as session:
        key = authenticate(session=session, key=credentials.credentials, now=utcnow())
        if key is None:
            raise _unauthorized("unknown or revoked API key", invalid=True)
        return key.id


ApiKeyId = Annotated[int, Depends(api_key_id)]


# -- routes ----------------------------------------------------------------------------------


def _out(order: LabOrder) -> dict[str, Any]:
    return LabOrderOut(
        order_id=order.order_id,
        status=order.status,
        test_name=order.test_name,
        ordered_at=order.ordered_at.astimezone(UTC),
        expected_by=order.expected_by.astimezone(UTC),
        resulted_at=order.resulted_at.astimezone(UTC) if order.resulted_at else None,
    ).model_dump(mode="json")


def _problems(status_code: int, *problems: tuple[str, str]) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"field": field, "problem": problem} for field, problem in problems]},
        status_code=status_code,
    )


def _not_found() -> JSONResponse:
    return _problems(404, ("order_id", "no lab order has this order_id"))


@router.post(
    "/lab-orders",
    status_code=201,
    response_model=LabOrderOut,
    summary="Create a lab order",
    responses={
        200: {"model": LabOrderOut, "description": "The same order was sent before; nothing changed."},
        409: {
            "model": Problems,
            "description": "An order with this order_id exists with other values, or the patient's details"
            " match a patient on file (by external_id or phone) only in part.",
        },
        **PROBLEM_RESPONSES,
    },
)
def create_lab_order(body: LabOrderCreate, key_id: ApiKeyId) -> JSONResponse:
    """Create the order, its patient (if new), an SMS identity and the lab-result promise."""
    patient = PatientIn(
        name=body.patient.name,
        phone=body.patient.phone,
        date_of_birth=body.patient.date_of_birth,
        external_id=body.patient.external_id,
    )
    try:
        with session_scope() as session:
            result = do_upsert_order(session=session, order_id=body.order_id, patient=patient,
                                     test_name=body.test_name, ordered_at=body.ordered_at,
                                     expected_by=body.expected_by, source="rest", actor_kind="api",
                                     actor_id=key_id)  # fmt: skip
            payload = _out(result.order)
    except PatientConflict as conflict:
        return _problems(409, *((field, conflict.problem) for field in conflict.fields))
    except LabInputError as error:
        return _problems(422, (error.field, error.problem))
    if result.outcome == UpsertOutcome.CONFLICT:
        return _problems(
            409,
            *(
                (field, "differs from the order already stored with this order_id")
                for field in result.differences
            ),
        )
    if result.outcome == UpsertOutcome.CREATED:
        return JSONResponse(payload, status_code=201, headers={"Location": f"lab-orders/{body.order_id}"})
    return JSONResponse(payload, status_code=200)


@router.patch(
    "/lab-orders/{order_id}",
    response_model=LabOrderOut,
    summary="Update a lab order's status or expected time",
    responses={
        404: {"model": Problems, "description": "No order has this order_id."},
        409: {"model": Problems, "description": "The status would move backwards."},
        **PROBLEM_RESPONSES,
    },
)
def update_lab_order(order_id: str, body: LabOrderPatch, key_id: ApiKeyId) -> JSONResponse:
    """Move the status forward (collected → in_lab → resulted, or cancelled) or set a new expected_by."""
    try:
        with session_scope() as session:
            order = do_update_order(session=session, order_id=order_id,
                                    status=LabStatus(body.status) if body.status else None,
                                    expected_by=body.expected_by, source="rest", actor_kind="api",
                                    actor_id=key_id)  # fmt: skip
            payload = _out(order)
    except LabOrderNotFound:
        return _not_found()
    except LabStatusConflict as error:
        return _problems(409, (error.field, error.problem))
    except LabInputError as error:
        return _problems(422, (error.field, error.problem))
    return JSONResponse(payload)


@router.get(
    "/lab-orders/{order_id}",
    response_model=LabOrderOut,
    summary="Read a lab order",
    responses={
        404: {"model": Problems, "description": "No order has this order_id."},
        401: PROBLEM_RESPONSES[401],
    },
)
def read_lab_order(order_id: str, key_id: ApiKeyId) -> JSONResponse:
    """Return the order with its status, expected time and result time."""
    with session_scope() as session:
        order = get_order(session=session, order_id=order_id)
        if order is None:
            return _not_found()
        return JSONResponse(_out(order))


# -- errors and the OpenAPI page ------------------------------------------------------------

_PROBLEM_TEXT = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "json_invalid": "is not valid JSON",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "string_type": "must be a string",
}


def describe_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Turn validation errors into problems that name the field in dotted form."""
    problems = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in {"body", "path", "query"}:
            loc = loc[1:]
        kind = error.get("type", "")
        # A JSON syntax error's location is a character offset in the body, not a field.
        field = "body" if kind == "json_invalid" else ".".join(loc) or "body"
        if kind in _PROBLEM_TEXT:
            problem = _PROBLEM_TEXT[kind]
        elif kind == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            problem = f"must be one of {expected.replace(' or ', ', ')}"
        else:
            problem = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        problems.append({"field": field, "problem": problem})
    return problems


def _render_docs(schema: dict[str, Any], base: str) -> str:
    components = schema.get("components", {}).get("schemas", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = components[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def type_of(node: dict[str, Any]) -> str:
        node = resolve(node)
        if "anyOf" in node:
            return " or ".join(type_of(option) for option in node["anyOf"])
        if "enum" in node:
            return "one of " + ", ".join(str(v) for v in node["enum"])
        return node.get("format") or node.get("type", "object")

    def rows(node: dict[str, Any], prefix: str = "") -> list[tuple[str, str, bool, str]]:
        node = resolve(node)
        out = []
        required = set(node.get("required", []))
        for name, prop in node.get("properties", {}).items():
            target = resolve(prop)
            if target.get("type") == "object" or "properties" in target:
                out.extend(rows(target, f"{prefix}{name}."))
            else:
                out.append((prefix + name, type_of(prop), name in required, prop.get("description", "")))
        return out

    esc = html.escape
    parts = []
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
            parts.append(f'<section aria-labelledby="{esc(anchor)}"><h2 id="{esc(anchor)}">'
                         f"<code>{esc(method.upper())} {esc(base + path)}</code></h2>")  # fmt: skip
            parts.append(f"<p>{esc(op.get('summary', ''))}. {esc(op.get('description', ''))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                table = "".join(
                    f"<tr><td><code>{esc(name)}</code></td><td>{esc(kind)}</td>"
                    f"<td>{'yes' if required else 'no'}</td><td>{esc(text)}</td></tr>"
                    for name, kind, required, text in rows(body)
                )
                parts.append("<table><caption>JSON body</caption><thead><tr><th scope=col>Field</th>"
                             "<th scope=col>Type</th><th scope=col>Required</th><th scope=col>Notes</th></tr>"
                             f"</thead><tbody>{table}</tbody></table>")  # fmt: skip
            answers = "".join(
                f"<li><strong>{esc(code)}</strong> {esc(resp.get('description', ''))}</li>"
                for code, resp in op.get("responses", {}).items()
            )
            parts.append(f"<h3>Answers</h3><ul>{answers}</ul></section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(schema["info"]["title"])}</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#1a1a1a}}
table{{border-collapse:collapse;width:100%;margin:.5rem 0}} th,td{{border:1px solid #999;padding:.3rem;text-align:left;vertical-align:top}}
caption{{text-align:left;font-weight:600}} section{{border-top:2px solid #ccc;margin-top:1.5rem}} code{{word-break:break-all}}
a{{color:#0645ad}} a:focus{{outline:3px solid #f90}}
</style></head><body><main>
<h1>{esc(schema["info"]["title"])} <small>v{esc(schema["info"]["version"])}</small></h1>
<p>{esc(schema["info"].get("description", ""))}</p>
<p>Authenticate every request with <code>Authorization: Bearer &lt;API key&gt;</code>.
Validation errors answer 422 with <code>{{"detail": [{{"field": …, "problem": …}}]}}</code>.
Machine-readable: <a href="{esc(base)}/openapi.json">openapi.json</a>.</p>
{"".join(parts)}
</main></body></html>"""


def create_api() -> FastAPI:
    """Build the /api/v1 application with its own error shape and OpenAPI page."""
    api = FastAPI(
        title="clinicbot lab API",
        version="1",
        description="Lab systems send lab orders and their status; clinicbot keeps patients updated.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.include_router(router)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(list(exc.errors()))}, status_code=422)

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(_render_docs(api.openapi(), base))

    return api
