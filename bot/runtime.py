"""Wire the pieces a running clinicbot needs: settings, database, analyser, domain, engine."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine as DbEngine

from bot.clinic_settings import ClinicContext, load_clinic
from bot.config import Settings, get_settings
from bot.conversations.domain import Domain, load_domain
from bot.conversations.engine import Engine, build_executor
from bot.db import get_engine, session_scope
from bot.db.migrate import require_at_head
from bot.nlu.pipeline import Nlu, get_nlu


@dataclass(frozen=True)
class Runtime:
    """Everything needed to handle messages in this process."""

    settings: Settings
    db: DbEngine
    nlu: Nlu
    domain: Domain
    engine: Engine
    clinic: ClinicContext


def load_nlu(settings: Settings | None = None) -> Nlu:
    """Return the analyser, trained from dialogues/ if the cache is stale."""
    settings = settings or get_settings()
    return get_nlu(
        dialogues_dir=settings.dialogues_dir,
        cache_dir=settings.model_cache_dir,
        clarify_threshold=settings.clarify_threshold,
    )


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    """Build the runtime once, checking the database and the clinic's settings."""
    settings = get_settings()
    db = get_engine()
    require_at_head(db)
    with session_scope() as session:
        clinic = load_clinic(session=session)
    executor = build_executor()
    domain = load_domain(root=settings.dialogues_dir, actions=set(executor.actions))
    nlu = load_nlu(settings)
    return Runtime(settings, db, nlu, domain, Engine(nlu=nlu, domain=domain, executor=executor), clinic)


def settle_heap() -> None:
    """Call once start-up is done: what is loaded by then (models, domain, mappers) leaves the collector's reach.

    Those objects live as long as the process, yet every full collection walked all of them: a pause of
    about 100 ms in a routing or web process, often while it held the database's one writer, which
    stalled every acknowledgement behind it. Frozen, a full collection walks only what came after.
    """
    gc.collect()
    gc.freeze()

