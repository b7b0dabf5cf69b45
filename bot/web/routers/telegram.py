"""Telegram webhook: verify the secret token, store the update once, acknowledge at once."""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request

from bot.channels.telegram import (
    MAX_UPDATE_BYTES,
    SECRET_HEADER,
    WEBHOOK_PATH,
    InvalidUpdate,
    TelegramChannel,
    accept_update,
    notify,
    parse_update,
)
from bot.config import Settings
from bot.patients.models import Channel
from bot.web.deps import RuntimeDep, SettingsDep, WorkersDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["telegram"])


def _verify_secret(request: Request, settings: Settings) -> None:
    """Answer 404 when Telegram is off and 403 unless the request carries our secret token."""
    if not settings.telegram_enabled:
        raise HTTPException(status_code=404)
    expected = settings.telegram_webhook_secret.get_secret_value().encode("utf-8")
    # Starlette decodes headers as latin-1; encoding back gives the bytes that were sent.
    given = request.headers.get(SECRET_HEADER, "").encode("latin-1")
    # Without a configured secret nothing can be verified: the webhook refuses everyone, never no one.
    if not expected or not given or not hmac.compare_digest(given, expected):
        log.warning("telegram webhook refused: %s secret token", "wrong" if given else "no")
        raise HTTPException(status_code=403, detail="invalid secret token")


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPDATE_BYTES:
            raise HTTPException(status_code=413, detail=f"an update is at most {MAX_UPDATE_BYTES} bytes")
    return bytes(body)


@router.post(WEBHOOK_PATH)
async def telegram_webhook(
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    runtime: RuntimeDep,
    workers: WorkersDep,
) -> dict[str, bool]:
    """Store one update's effect once, wake the workers, and acknowledge; replies go out via the API."""
    _verify_secret(request, settings)
    try:
        update = parse_update(await _read_body(request))
    except InvalidUpdate as error:
        log.warning("telegram webhook refused a malformed update")
        raise HTTPException(status_code=400, detail=str(error)) from None
    event, handled = await workers.intake.run(accept_update, update, domain=runtime.domain)
    notify(workers, handled)
    channel = workers.channels.get(Channel.TELEGRAM)
    if event.callback_query_id and isinstance(channel, TelegramChannel):
        # After the response: Telegram waits for our 200, the patient's spinner can wait a moment.
        background.add_task(channel.answer_callback, callback_query_id=event.callback_query_id)
    return {"ok": True}
