"""Subprocesses for benchmarks: artifactd workers and the other queues' workers.

Each runs as ``python -m ...`` from the repository root with its output in a
log file, so a benchmark measures a process a user would run, and a failure
leaves something to read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not run as set up (a process failed, a wait timed out)."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any artifactd or Anthropic setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARTIFACTD_", "ANTHROPIC_"))
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def worker_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of an artifactd worker on ``db_url``."""
    return clean_env(
        ARTIFACTD_DATABASE_URL=db_url, ARTIFACTD_LOG_FORMAT="json", **extra
    )


class Process:
    """A ``python -m <module> <args>`` subprocess logging to ``log_path``."""

    def __init__(
        self, module: str, args: list[str], env: dict[str, str], log_path: Path
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait() and stop()
        self.started = time.monotonic()
        self.cpu_s: float | None = None
        self.elapsed_s: float | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return not self._reap()

    def _reap(self) -> bool:
        """Reap the process if it has exited; True once it has.

        Reaping here (``os.wait4``), not through Popen, keeps its resource
        usage: ``cpu_s`` is the CPU time it used, user and system.
        """
        if self.proc.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if not pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.elapsed_s = time.monotonic() - self.started
        self._log.close()
        return True

    def _reap_within(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._reap():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def wait(self, timeout_s: float) -> float:
        """Wait for a clean exit; returns seconds since start. Raises BenchError."""
        if not self._reap_within(timeout_s):
            self.stop()
            raise BenchError(
                f"{self.log_path.name}: still running after {timeout_s:g}s"
            )
        if self.proc.returncode != 0:
            raise BenchError(
                f"{self.log_path.name}: exit code {self.proc.returncode}\n{self.tail()}"
            )
        assert self.elapsed_s is not None
        return self.elapsed_s

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not go in time."""
        if not self._reap():
            self.proc.send_signal(signal.SIGTERM)
            if not self._reap_within(timeout_s):
                self.proc.kill()
                self._reap_within(30.0)
        self._log.close()

    def raise_if_exited(self, what: str) -> None:
        """BenchError saying ``what`` with the end of the log, once it has exited."""
        if not self.running():
            raise BenchError(f"{what}\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


class CpuClock:
    """Samples CPU time against the wall clock until stopped or the source ends.

    ``cpu_between`` then gives the CPU used over a stretch of wall time, such
    as the drain window read from the database: a busy machine stretches the
    clock, but hardly the CPU each job costs. Only meaningful when the
    database server shares this machine's clock. ``for_process`` follows one
    process until it exits; ``for_database`` follows the server processes of
    every session on one database (the server must run on this machine).
    """

    def __init__(self, sample: Callable[[], float], interval_s: float = 0.01) -> None:
        self._sample = sample
        self._samples: list[tuple[float, float]] = []
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-clock", daemon=True)
        self._thread.start()

    @classmethod
    def for_process(cls, pid: int) -> CpuClock:
        process = psutil.Process(pid)

        def sample() -> float:
            times = process.cpu_times()
            return float(times.user + times.system)

        return cls(sample)

    @classmethod
    def for_database(cls, url: str) -> CpuClock:
        return cls(_BackendsCpu(url))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    cpu_s = self._sample()
                except (psutil.Error, psycopg.Error):  # the source is gone
                    return
                self._samples.append((time.time(), cpu_s))
                self._stop.wait(self._interval_s)
        finally:
            close = getattr(self._sample, "close", None)
            if close is not None:
                close()

    def stop(self) -> None:
        self._stop.set()

    def cpu_between(self, start: float, end: float) -> float | None:
        """CPU seconds used from ``start`` to ``end`` (epoch seconds), if sampled."""
        self._thread.join(timeout=5)
        if (
            not self._samples
            or start < self._samples[0][0]
            or end > self._samples[-1][0]
        ):
            return None
        return self._at(end) - self._at(start)

    def _at(self, when: float) -> float:
        samples = self._samples
        for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
            if t0 <= when <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)
        return samples[-1][1]


class _BackendsCpu:
    """CPU of the server processes of one database's sessions, summed.

    Sessions come and go (a pool opens more); each one's last reading is
    kept, so the total only grows. Its own session is left out.
    """

    REFRESH_S = 0.2

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        self._processes: dict[int, psutil.Process] = {}
        self._last: dict[int, float] = {}
        self._refreshed = 0.0

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self._refreshed > self.REFRESH_S:
            self._refreshed = now
            rows = self._conn.execute(
                """
                SELECT pid FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                """
            ).fetchall()
            for (pid,) in rows:
                if pid not in self._processes:
                    try:
                        self._processes[pid] = psutil.Process(pid)
                    except psutil.Error:
                        continue
        for pid, process in list(self._processes.items()):
            try:
                times = process.cpu_times()
            except psutil.Error:
                del self._processes[pid]  # ended: its last reading stays
                continue
            self._last[pid] = times.user + times.system
        return sum(self._last.values())

    def close(self) -> None:
        self._conn.close()


def worker(db_url: str, log_path: Path, *args: str, **env: str) -> Process:
    """An artifactd worker: ``python -m worker run <args>``."""
    return Process("worker", ["run", *args], worker_env(db_url, **env), log_path)


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``condition`` until it is truthy; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(
                f"timed out after {timeout_s:g}s waiting for {what or condition}"
            )
        time.sleep(interval_s)
