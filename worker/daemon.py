"""Assembles a worker from settings: pool, generator, loops, signals.

``artifactd run`` and ``artifactd demo`` both come through here, so what a
worker is made of is decided in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from shared.artifact_types import load_artifact_types
from shared.database import listen_url
from shared.settings import Settings
from worker.gate import DatabaseGate
from worker.generators.base import Generator, LLMGate
from worker.runner import OutcomeHook, Worker, WorkerConfig, WorkerStats

log = structlog.get_logger(__name__)


def build_generator(settings: Settings, name: str, gate: LLMGate) -> Generator:
    """The generator named ``name`` (already resolved from ``auto``)."""
    if name == "anthropic":
        from worker.generators.anthropic import AnthropicGenerator

        if settings.anthropic_api_key is None:
            from shared.errors import ConfigurationError

            raise ConfigurationError("ANTHROPIC_API_KEY: required by the anthropic generator")
        return AnthropicGenerator(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            model_override=settings.model,
            request_timeout_s=settings.request_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            attempt_timeout_s=settings.attempt_timeout_s,
            gate=gate,
        )
    from worker.generators import get_generator

    return get_generator(name)


def notification_channels(settings: Settings) -> list[str]:
    """Channels that get an outbox row for every final state."""
    return ["wecom"] if settings.wecom_webhook_url is not None else []


def pool_size(concurrency: int) -> int:
    # Claims, completions, renewals and progress share the pool; jobs never
    # hold a connection while the LLM runs, so a few suffice at any concurrency.
    return max(2, min(4 + concurrency // 16, 10))


async def run_worker(
    settings: Settings,
    url: str,
    *,
    generator_name: str | None = None,
    drain: bool = False,
    extra_loops: list[Callable[[Worker], Awaitable[None]]] | None = None,
    on_outcome: list[OutcomeHook] | None = None,
    on_started: Callable[[Worker], Any] | None = None,
) -> WorkerStats:
    """Run one worker process until it is stopped or drained."""
    name = generator_name or settings.resolved_generator
    types = load_artifact_types(settings.types_dir)
    size = pool_size(settings.concurrency)
    async with AsyncConnectionPool(
        url,
        min_size=2,
        max_size=size,
        kwargs={"autocommit": True},
        open=False,
        name="artifactd-worker",
    ) as pool:
        await pool.wait(timeout=30)
        gate = DatabaseGate(pool)
        generator = build_generator(settings, name, gate)
        config = WorkerConfig(
            database_url=url,
            listen_url=listen_url(settings, url),
            concurrency=settings.concurrency,
            fleet_concurrency=settings.fleet_concurrency,
            lease_s=settings.lease_s,
            poll_interval_s=settings.poll_interval_s,
            shutdown_grace_s=settings.shutdown_grace_s,
            attempt_timeout_s=settings.attempt_timeout_s,
            locale=settings.locale,
            drain=drain,
            channels=notification_channels(settings),
        )
        holder: list[Worker] = []
        loops = [(lambda f=f: f(holder[0])) for f in (extra_loops or [])]
        worker = Worker(
            config,
            generator=generator,
            artifact_types=types,
            pool=pool,
            extra_loops=loops,
            on_outcome=on_outcome,
        )
        holder.append(worker)
        worker.install_signal_handlers()
        log.info(
            "worker.started",
            worker_id=worker.id,
            generator=name,
            generator_choice=settings.generator,
            concurrency=settings.concurrency,
            fleet_concurrency=settings.fleet_concurrency,
            lease_s=settings.lease_s,
            drain=drain,
            pool_size=size,
            artifact_types=sorted(types),
        )
        if on_started is not None:
            on_started(worker)
        return await worker.run()


def run_worker_sync(settings: Settings, url: str, **kwargs: Any) -> WorkerStats:
    return asyncio.run(run_worker(settings, url, **kwargs))
