"""FastAPI dependencies: settings, the runtime and the workers of this process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bot.channels.workers import Workers
from bot.config import Settings, get_settings
from bot.runtime import Runtime


async def settings_dep() -> Settings:
    """Return the process settings (async: a plain def would cost every request a thread-pool hop)."""
    return get_settings()


async def runtime_dep(request: Request) -> Runtime:
    """Return the runtime built at start-up."""
    return request.app.state.runtime


async def workers_dep(request: Request) -> Workers:
    """Return this process's workers."""
    return request.app.state.workers


SettingsDep = Annotated[Settings, Depends(settings_dep)]
RuntimeDep = Annotated[Runtime, Depends(runtime_dep)]
WorkersDep = Annotated[Workers, Depends(workers_dep)]
