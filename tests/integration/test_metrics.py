"""The worker's Prometheus endpoint, scraped over loopback from a real worker.

Workers are ``python -m worker run`` subprocesses on the session database
with ``ARTIFACTD_METRICS_PORT=0``: the endpoint takes a free port and the
test reads it from the ``metrics.serving`` log line.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.messages_server import FakeMessagesServer, rate_limited
from tests.support.processes import WorkerProcess, scalar, seed, wait_until
from worker.metrics import record_notification

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample on /metrics, keyed by name and labels."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def sampled(samples: Samples) -> Samples | None:
    """The samples once the queue probe has reported, else None."""
    return samples if value(samples, "artifactd_queue_depth") is not None else None


def metrics_port(worker: WorkerProcess) -> int | None:
    for line in worker.log_text().splitlines():
        if '"metrics.serving"' in line:
            return int(json.loads(line)["port"])
    return None


@pytest.fixture
def worker_factory(clean_db: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def start_worker(
    started: list[WorkerProcess], db_url: str, tmp_path: Path, **env: str
) -> tuple[WorkerProcess, int]:
    worker = WorkerProcess(
        db_url,
        tmp_path / f"worker-{len(started)}.log",
        ARTIFACTD_METRICS_PORT="0",
        ARTIFACTD_CONCURRENCY="4",
        ARTIFACTD_POLL_INTERVAL_S="0.2",
        **env,
    )
    started.append(worker)
    port = wait_until(
        lambda: metrics_port(worker) or worker.proc.poll() is not None,
        timeout_s=30,
        message="metrics.serving in the worker log",
    )
    assert worker.proc.poll() is None, worker.log_text()
    return worker, int(port)


def finished(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM generated_artifacts WHERE state <> 'processing'",
        )
    )


def test_metrics__counters_move_when_artifacts_finish(
    clean_db: str, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    seed(clean_db, 2, run_after=later)  # waiting for a retry: depth, never claimed
    worker, port = start_worker(
        worker_factory, clean_db, tmp_path, ARTIFACTD_GENERATOR="echo"
    )
    before = wait_until(
        lambda: sampled(scrape(port)), timeout_s=30, message="a first queue sample"
    )

    seed(clean_db, 5)
    seed(clean_db, 1, artifact_type="no_such_type")
    seed(clean_db, 1, transcript="   ")
    wait_until(lambda: finished(clean_db) == 7, timeout_s=30, message="7 finished rows")
    after = scrape(port)

    assert value(before, "artifactd_queue_depth") == 2
    assert value(before, "artifactd_claims_total") == 0
    assert value(after, "artifactd_claims_total") == 7
    assert value(after, "artifactd_in_flight") == 0
    assert value(after, "artifactd_concurrency") == 4
    success = {
        "artifact_type": "meeting_minutes",
        "outcome": "success",
        "error_code": "",
    }
    assert value(before, "artifactd_outcomes_total", **success) is None
    assert value(after, "artifactd_outcomes_total", **success) == 5
    assert (
        value(
            after,
            "artifactd_outcomes_total",
            artifact_type="other",
            outcome="failed",
            error_code="UNKNOWN_ARTIFACT_TYPE",
        )
        == 1
    )
    assert (
        value(
            after,
            "artifactd_outcomes_total",
            artifact_type="meeting_minutes",
            outcome="failed",
            error_code="INPUT_EMPTY",
        )
        == 1
    )
    durations = {"artifact_type": "meeting_minutes", "outcome": "success"}
    assert value(after, "artifactd_job_duration_seconds_count", **durations) == 5
    assert (
        value(after, "artifactd_job_duration_seconds_bucket", le="+Inf", **durations)
        == 5
    )
    # The echo generator reports characters, not tokens: nothing is invented.
    assert not any(name == "artifactd_llm_tokens_total" for name, _ in after)

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics__count_tokens_and_fleet_pauses_from_the_llm(
    clean_db: str, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    with FakeMessagesServer() as llm:
        llm.script(rate_limited(retry_after=1))
        worker, port = start_worker(
            worker_factory,
            clean_db,
            tmp_path,
            ARTIFACTD_GENERATOR="anthropic",
            ANTHROPIC_API_KEY="sk-ant-test-metrics",
            ANTHROPIC_BASE_URL=llm.base_url,
        )

        seed(clean_db, 1, artifact_type="summary")
        wait_until(
            lambda: finished(clean_db) == 1, timeout_s=60, message="1 finished row"
        )
        samples = scrape(port)

    assert len(llm.requests) == 2
    assert (
        value(samples, "artifactd_fleet_pauses_total", reason="LLM_RATE_LIMITED") == 1
    )
    tokens = {
        dict(labels)["kind"]: amount
        for (name, labels), amount in samples.items()
        if name == "artifactd_llm_tokens_total"
        and dict(labels)["artifact_type"] == "summary"
    }
    assert set(tokens) == {"input", "output"}
    assert tokens["input"] > 0 and tokens["output"] > 0
    assert (
        value(
            samples,
            "artifactd_outcomes_total",
            artifact_type="summary",
            outcome="success",
            error_code="",
        )
        == 1
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_record_notification__counts_by_channel_and_outcome() -> None:
    def sent() -> float:
        labels = {"channel": "wecom", "outcome": "sent"}
        return REGISTRY.get_sample_value("artifactd_notifications_total", labels) or 0.0

    before = sent()

    record_notification("wecom", "sent")
    record_notification("wecom", "sent")
    record_notification("wecom", "dead")

    assert sent() == before + 2
