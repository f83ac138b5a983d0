"""Assembles a worker from settings: pool, generator, loops, signals.

``artifactd run`` and ``artifactd demo`` both come through here, so what a
worker is made of is decided in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from shared.artifact_types import load_artifact_types
from shared.database import listen_url
from shared.settings import Settings
from worker import systemd
from worker.channels import configured_channel_names
from worker.gate import DatabaseGate
from worker.generators.base import Generator, LLMGate
from worker.metrics import QueueProbe, WorkerMetrics
from worker.notifier import build_notifier
from worker.runner import OutcomeHook, Worker, WorkerConfig, WorkerStats

log = structlog.get_logger(__name__)


def build_generator(settings: Settings, name: str, gate: LLMGate) -> Generator:
    """The generator named ``name`` (already resolved from ``auto``)."""
    if name == "anthropic":
        from worker.generators.anthropic import AnthropicGenerator

        if settings.anthropic_api_key is None:
            from shared.errors import ConfigurationError

            raise ConfigurationError(
                "ANTHROPIC_API_KEY: required by the anthropic generator"
            )
        # Nested limits: a stall ends a request, a request ends inside an
        # attempt. Out of order they still hold, but the outer one always
        # fires first and the inner code is never seen.
        if not (
            settings.stall_timeout_s
            < settings.request_timeout_s
            <= settings.attempt_timeout_s
        ):
            log.warning(
                "llm.timeouts_not_nested",
                stall_timeout_s=settings.stall_timeout_s,
                request_timeout_s=settings.request_timeout_s,
                attempt_timeout_s=settings.attempt_timeout_s,
                action="the outer limit wins",
            )
        return AnthropicGenerator(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            model_override=settings.model,
            request_timeout_s=settings.request_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            attempt_timeout_s=settings.attempt_timeout_s,
            context_tokens=settings.context_tokens,
            gate=gate,
        )
    from worker.generators import get_generator

    return get_generator(name)


def notification_channels(settings: Settings) -> list[str]:
    """Channels that get an outbox row for every final state."""
    return configured_channel_names(settings)


def pool_size(concurrency: int) -> int:
    # Claims, completions, renewals and progress share the pool; jobs never
    # hold a connection while the LLM runs, so a few suffice at any concurrency.
    return max(2, min(4 + concurrency // 16, 10))


def pool_connection_kwargs(settings: Settings) -> dict[str, Any]:
    """How the worker's pooled connections are opened."""
    # The worker runs a small fixed set of statements, the claims and final
    # writes among them large CTEs: each is prepared on its first run on a
    # connection rather than psycopg's default fifth. The pool hands its
    # connections out in turn, so with the default every statement ran
    # unprepared (parsed and planned anew) five times per connection: most
    # of the claims and writes of a burst that follows a quiet spell.
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0}
    if settings.listen_url is not None:
        # A separate LISTEN URL means the pool goes through PgBouncer in
        # transaction mode (DESIGN.md, running at scale). There each statement
        # may land on another server connection, so psycopg's automatic
        # prepared statements fail ("prepared statement _pg3_1 already
        # exists") and the error killed the claim loop: prepare nothing.
        kwargs["prepare_threshold"] = None
    return kwargs


# A background loop the worker runs beside its own, made once the worker exists.
LoopFactory = Callable[[Worker], Coroutine[Any, Any, None]]


def _bound(
    factory: LoopFactory, holder: list[Worker]
) -> Callable[[], Coroutine[Any, Any, None]]:
    """``factory`` as the worker's loop, given the worker once ``holder`` has it."""
    return lambda: factory(holder[0])


def _notifier_loop(notifier: Any) -> LoopFactory:
    return lambda _: _notifier_in_worker(notifier)


# How long a stopping worker lets its notifier finish the sends in flight.
NOTIFIER_STOP_S = 5.0


async def _notifier_in_worker(notifier: Any) -> None:
    """The notifier as one of the worker's loops, stopped gently.

    The worker cancels its loops when it stops. Cancelling a send between the
    robot's answer and the write that records it would send it again later,
    so a cancel here asks the notifier to stop and waits a little for it.
    """
    task = asyncio.create_task(notifier.run(), name="notifier")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        notifier.stop()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, NOTIFIER_STOP_S)
        raise


async def run_worker(
    settings: Settings,
    url: str,
    *,
    generator_name: str | None = None,
    drain: bool = False,
    extra_loops: list[LoopFactory] | None = None,
    on_outcome: list[OutcomeHook] | None = None,
    on_started: Callable[[Worker], Any] | None = None,
) -> WorkerStats:
    """Run one worker process until it is stopped or drained."""
    name = generator_name or settings.resolved_generator
    types = load_artifact_types(settings.types_dir)
    size = pool_size(settings.concurrency)
    connection_kwargs = pool_connection_kwargs(settings)
    async with AsyncConnectionPool(
        url,
        min_size=2,
        max_size=size,
        kwargs=connection_kwargs,
        open=False,
        name="artifactd-worker",
    ) as pool:
        await pool.wait(timeout=30)
        # systemd readiness and watchdog, and the Prometheus endpoint: each
        # only when asked for (NOTIFY_SOCKET, ARTIFACTD_METRICS_PORT).
        sd = systemd.notifier()
        meter = None
        if settings.metrics_port is not None:
            meter = WorkerMetrics.serve(settings.metrics_port, set(types))
        gate: LLMGate = DatabaseGate(pool)
        if meter is not None:
            gate = meter.watch_gate(gate)
        generator = build_generator(settings, name, gate)
        if meter is not None:
            generator = meter.watch_generator(generator)
        probe = QueueProbe(pool)
        loop_factories = list(extra_loops or [])
        hooks = list(on_outcome or [])
        if meter is not None or sd.enabled:
            loop_factories.append(lambda _: probe.run())
        if meter is not None:
            hooks.append(meter.record_outcome)
        if sd.enabled:
            loop_factories.append(lambda w: sd.run(w, probe))
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
        # The worker delivers notifications too, unless told not to. Its
        # notifier holds no LISTEN connection of its own (one per process):
        # final states written here wake it, polling covers the rest.
        if settings.worker_notifier:
            notifier = build_notifier(
                settings, pool, notifier_id=config.worker_id, artifact_types=types
            )
            if notifier is not None:
                loop_factories.append(_notifier_loop(notifier))
                hooks.append(notifier.on_outcome)
        holder: list[Worker] = []
        loops = [_bound(f, holder) for f in loop_factories]
        worker = Worker(
            config,
            generator=generator,
            artifact_types=types,
            pool=pool,
            extra_loops=loops,
            on_outcome=hooks,
        )
        holder.append(worker)
        worker.install_signal_handlers()
        if sd.enabled:
            sd.install_signal_handlers(worker)
        if meter is not None:
            meter.attach(worker, probe)
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
        # What start-up built (modules, classes, the SDK: some 200,000
        # objects) lives as long as the process. Frozen, it is left out of
        # the collector's full passes, which otherwise walk all of it and
        # hold up every job of this process for over 100 ms each time.
        gc.collect()
        gc.freeze()
        try:
            return await worker.run()
        finally:
            sd.stopping()
            if meter is not None:
                meter.close()


def run_worker_sync(settings: Settings, url: str, **kwargs: Any) -> WorkerStats:
    return asyncio.run(run_worker(settings, url, **kwargs))
