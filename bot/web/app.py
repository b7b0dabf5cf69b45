"""The web application: webhooks, the patient web chat, and (later) the staff inbox and lab API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from bot.channels.registry import build_channels
from bot.channels.workers import Waker, Workers
from bot.config import get_settings
from bot.runtime import get_runtime
from bot.staff.auth import warm_sign_in


def create_app(
    *, start_workers: bool = True, telegram_polling: bool = False, wake_paths: list[str] | None = None
) -> FastAPI:
    """Build the app; workers start with it unless a test drives them by hand.

    With `wake_paths` the processor and sender run in worker processes (`serve --processors N`):
    this process only stores and acknowledges, and wakes them through those sockets.
    """
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = get_runtime()
        warm_sign_in()  # once a process: the first unknown email is no slower than any other
        waker = Waker(wake_paths) if wake_paths else None
        workers = Workers(engine=runtime.engine, channels=build_channels(settings), settings=settings, waker=waker)
        app.state.runtime, app.state.workers = runtime, workers
        workers.intake.start()  # storing webhooks is this process's job even when another one routes
        if start_workers and waker is None:
            workers.start()
        poller = None
        if telegram_polling:
            # Development without a public URL: fetch Telegram updates instead of receiving them.
            from bot.channels.telegram import TelegramPoller

            poller = TelegramPoller.from_settings(settings, domain=runtime.domain, workers=workers)
            poller.start()
        try:
            yield
        finally:
            if poller is not None:
                poller.stop()
            # Off the event loop: stopping joins threads, and closing Telegram's client runs its own loop.
            await run_in_threadpool(workers.stop)

    # No schema of the whole app: it would list every staff and admin route to anyone who asks. The lab
    # API, for integrators, serves its own under /api/v1.
    app = FastAPI(title="clinicbot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    from bot.web.routers import staff_admin, staff_cases, staff_inbox, staff_login, telegram, twilio, webchat
    from bot.web.staff_deps import install_handlers

    app.include_router(twilio.router)
    app.include_router(telegram.router)
    app.include_router(webchat.router)
    install_handlers(app)
    app.include_router(staff_login.public)
    app.include_router(staff_login.router)
    app.include_router(staff_inbox.router)
    app.include_router(staff_cases.router)
    app.include_router(staff_admin.router)
    from bot.web.routers import staff_promises

    app.include_router(staff_promises.router)
    from bot.web.routers import staff_requests

    app.include_router(staff_requests.router)
    from bot.web.routers.api_v1 import create_api as create_lab_api

    app.mount("/api/v1", create_lab_api())  # the lab REST API, with its own OpenAPI page at /api/v1/docs
    app.mount("/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="static")

    from bot.metrics import WebhookTimer
    from bot.web.routers import health

    app.include_router(health.router)
    app.add_middleware(WebhookTimer)

    return app
