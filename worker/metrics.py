"""Prometheus metrics for the worker, served on ``ARTIFACTD_METRICS_PORT``.

The metrics are module-level objects in prometheus_client's default
registry, so any component in the process can record into them (the
notifier counts deliveries with ``record_notification``) whether or not an
endpoint is served. What the worker records:

- ``artifactd_claims_total``, ``artifactd_in_flight``,
  ``artifactd_concurrency``: read from the running worker at scrape time;
- ``artifactd_outcomes_total{artifact_type, outcome, error_code}`` and
  ``artifactd_job_duration_seconds{artifact_type, outcome}``: one per
  finished attempt (outcome ``success``, ``failed``, ``retry`` or ``lost``);
- ``artifactd_llm_tokens_total{artifact_type, model, kind}``: the ``*_tokens``
  entries of a result's ``usage`` metadata, counted when the generator
  returns (tokens are spent even when the write is later refused);
- ``artifactd_fleet_pauses_total{reason}``: fleet pauses this process set,
  and ``artifactd_fleet_pause_seconds``: what is left of the current pause;
- ``artifactd_queue_depth`` and ``artifactd_queue_leased``: fleet-wide rows
  waiting and rows leased, sampled every ``QUEUE_SAMPLE_S`` seconds by a
  ``QueueProbe`` (absent while the database does not answer);
- ``artifactd_notifications_total{channel, outcome}``: recorded by the
  notifier.

The database is never queried from the HTTP thread; the probe runs on the
worker's event loop and the scrape reads its last sample.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from shared import queue
from shared.errors import ConfigurationError
from worker.executor import Job, Outcome
from worker.generators.base import (
    GenerationRequest,
    GenerationResult,
    Generator,
    LLMGate,
    ProgressCallback,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from worker.runner import Worker

log = structlog.get_logger(__name__)

# Seconds between fleet-wide samples of the queue. Every worker process
# runs one count over the partial index of processing rows this often.
QUEUE_SAMPLE_S = 10.0

# Label for artifact types no configuration knows (rows inserted by other
# programs), so a stray value cannot grow the number of series without end.
OTHER_TYPE = "other"

# Prometheus scrapes from another host; restrict with a firewall, not here.
ALL_INTERFACES = "0.0.0.0"

# From an echo job (milliseconds) to a long streamed answer (minutes).
DURATION_BUCKETS_S = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)

OUTCOMES = Counter(
    "artifactd_outcomes",
    "Finished attempts by artifact type, outcome and error code.",
    ["artifact_type", "outcome", "error_code"],
)
JOB_DURATION = Histogram(
    "artifactd_job_duration_seconds",
    "Seconds from claim to the outcome of one attempt.",
    ["artifact_type", "outcome"],
    buckets=DURATION_BUCKETS_S,
)
TOKENS = Counter(
    "artifactd_llm_tokens",
    "LLM tokens reported in results' usage metadata, by kind (input, output).",
    ["artifact_type", "model", "kind"],
)
FLEET_PAUSES = Counter(
    "artifactd_fleet_pauses",
    "Fleet-wide claim pauses this process set after a 429 or 529.",
    ["reason"],
)
NOTIFICATIONS = Counter(
    "artifactd_notifications",
    "Notification delivery attempts by channel and outcome (sent, retry, dead).",
    ["channel", "outcome"],
)


def record_notification(channel: str, outcome: str) -> None:
    """Count one delivery attempt: outcome ``sent``, ``retry`` or ``dead``."""
    NOTIFICATIONS.labels(channel=channel, outcome=outcome).inc()


# -- the fleet-wide queue sample ----------------------------------------------


@dataclass(frozen=True)
class QueueSample:
    waiting: int
    leased: int
    fleet_pause_s: float


class QueueProbe:
    """Samples queue depth and the fleet pause from the database, periodically."""

    def __init__(
        self, pool: AsyncConnectionPool, interval_s: float = QUEUE_SAMPLE_S
    ) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self.latest: QueueSample | None = None

    async def sample(self) -> QueueSample | None:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(queue.QUEUE_DEPTH)
                depth = await cur.fetchone()
                cur = await conn.execute(
                    queue.FLEET_PAUSE_REMAINING, {"name": queue.LLM_CONTROL}
                )
                pause = await cur.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The claim loop already warns about the database; a stale depth
            # would mislead, so the gauges go away until it answers again.
            log.debug("queue_probe.failed", error=" ".join(str(exc).split()))
            self.latest = None
            return None
        waiting, leased = depth if depth else (0, 0)
        self.latest = QueueSample(
            waiting=int(waiting),
            leased=int(leased),
            fleet_pause_s=max(float(pause[0]), 0.0) if pause else 0.0,
        )
        return self.latest

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._interval_s)


# -- what the worker reports ----------------------------------------------------


class WorkerCollector(Collector):
    """Reads the running worker and the last queue sample at scrape time."""

    def __init__(self, worker: Worker, probe: QueueProbe) -> None:
        self._worker = worker
        self._probe = probe

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        yield CounterMetricFamily(
            "artifactd_claims", "Rows this process claimed.", value=worker.stats.claimed
        )
        yield GaugeMetricFamily(
            "artifactd_in_flight", "Jobs this process runs now.", value=worker.in_flight
        )
        yield GaugeMetricFamily(
            "artifactd_concurrency",
            "Jobs this process may run at once.",
            value=worker.config.concurrency,
        )
        sample = self._probe.latest
        if sample is None:
            return
        yield GaugeMetricFamily(
            "artifactd_queue_depth",
            "Rows in processing, fleet-wide, with no live lease (ready or waiting to retry).",
            value=sample.waiting,
        )
        yield GaugeMetricFamily(
            "artifactd_queue_leased",
            "Rows in processing, fleet-wide, held under a live lease.",
            value=sample.leased,
        )
        yield GaugeMetricFamily(
            "artifactd_fleet_pause_seconds",
            "Seconds left of the fleet-wide claim pause (0 when claims are open).",
            value=sample.fleet_pause_s,
        )


class WorkerMetrics:
    """The metrics endpoint of one worker process and the hooks that feed it."""

    def __init__(self, server: WSGIServer, artifact_types: set[str]) -> None:
        self._server = server
        self._types = artifact_types
        self._collector: WorkerCollector | None = None

    @classmethod
    def serve(
        cls, port: int, artifact_types: set[str], addr: str = ALL_INTERFACES
    ) -> WorkerMetrics:
        """Start the HTTP endpoint (a daemon thread); port 0 picks a free one."""
        try:
            server, _thread = start_http_server(port, addr=addr)
        except OSError as exc:
            raise ConfigurationError(
                f"ARTIFACTD_METRICS_PORT: cannot listen on {addr}:{port}: {exc.strerror}"
            ) from exc
        log.info("metrics.serving", port=server.server_port, addr=addr)
        return cls(server, artifact_types)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def attach(self, worker: Worker, probe: QueueProbe) -> None:
        """Report on ``worker`` until ``close``."""
        self._collector = WorkerCollector(worker, probe)
        REGISTRY.register(self._collector)

    def close(self) -> None:
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None
        self._server.shutdown()
        self._server.server_close()

    # -- hooks ------------------------------------------------------------------

    def _type_label(self, artifact_type: str) -> str:
        return artifact_type if artifact_type in self._types else OTHER_TYPE

    def record_outcome(self, job: Job, outcome: Outcome) -> None:
        """The worker's outcome hook: one count and one duration per attempt."""
        artifact_type = self._type_label(job.row.artifact_type)
        state = outcome.state if outcome.written else "lost"
        OUTCOMES.labels(
            artifact_type=artifact_type,
            outcome=state,
            error_code=outcome.error_code or "",
        ).inc()
        JOB_DURATION.labels(artifact_type=artifact_type, outcome=state).observe(
            time.monotonic() - job.started
        )

    def record_usage(self, artifact_type: str, metadata: dict[str, Any]) -> None:
        usage = metadata.get("usage")
        if not isinstance(usage, dict):
            return
        model = str(metadata.get("model") or "")
        label = self._type_label(artifact_type)
        for key, value in usage.items():
            if key.endswith("_tokens") and isinstance(value, int) and value > 0:
                kind = key.removesuffix("_tokens")
                TOKENS.labels(artifact_type=label, model=model, kind=kind).inc(value)

    def watch_generator(self, generator: Generator) -> Generator:
        return _UsageCountingGenerator(generator, self)

    def watch_gate(self, gate: LLMGate) -> LLMGate:
        return _PauseCountingGate(gate)


class _UsageCountingGenerator:
    """Passes every call through; counts the tokens a result reports."""

    def __init__(self, inner: Generator, metrics: WorkerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self.name = inner.name

    async def generate(
        self, request: GenerationRequest, report_progress: ProgressCallback
    ) -> GenerationResult:
        result = await self._inner.generate(request, report_progress)
        self._metrics.record_usage(request.artifact_type.name, result.metadata)
        return result

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PauseCountingGate:
    """Passes every call through; counts the fleet pauses this process sets."""

    def __init__(self, inner: LLMGate) -> None:
        self._inner = inner

    async def wait_open(self) -> None:
        await self._inner.wait_open()

    async def pause(self, seconds: float, reason: str) -> None:
        FLEET_PAUSES.labels(reason=reason).inc()
        await self._inner.pause(seconds, reason)
