"""``python -m bench throughput|latency|llm|scale|memory [--json]``.

Each command starts what it needs, prints a table (or, with ``--json``, one
JSON object and nothing else on standard output) and exits 0; a benchmark
that could not run exits 1 with the reason on standard error. Whether a goal
was met is in the output, not the exit code: on a shared machine a missed
goal is a number to look at, not a crash.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from bench import report
from bench.process import BenchError
from bench.server import bench_server, cpu_ticks, machine, steal_pct


def _command(name: str, run: Callable[..., dict[str, Any]], **kwargs: Any) -> None:
    as_json = kwargs.pop("as_json")
    try:
        with bench_server() as admin_url:
            before = machine(admin_url)
            ticks = cpu_ticks()
            started = time.monotonic()
            result = run(admin_url, **kwargs)
            result["elapsed_s"] = round(time.monotonic() - started, 1)
            result["machine"] = before
            result["machine"]["load_average_after"] = list(
                machine(admin_url)["load_average"]
            )
            result["machine"]["cpu_steal_pct"] = steal_pct(ticks, cpu_ticks())
    except BenchError as exc:
        click.echo(f"bench {name}: {exc}", err=True)
        sys.exit(1)
    except psycopg.Error as exc:
        # Most often the role may not create databases (see bench/README.md).
        reason = " ".join(str(exc).split())
        click.echo(
            f"bench {name}: PostgreSQL: {type(exc).__name__}: {reason}", err=True
        )
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        report.show(result)


# Counts and durations a benchmark cannot run with are refused by name.
FC = TypeVar("FC", bound=Callable[..., Any])
SECONDS = click.FloatRange(min=0, min_open=True)


def _count(flag: str, default: int, help: str, *, least: int = 1) -> Callable[[FC], FC]:
    """An integer option of at least ``least``, its default shown in --help."""
    return click.option(
        flag,
        default=default,
        type=click.IntRange(min=least),
        show_default=True,
        help=help,
    )


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object only."
)


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM to the bench alone (a supervisor, a CI cancel) unwinds like
    # Ctrl-C: the workers it started are stopped and its databases dropped.
    raise SystemExit(128 + signum)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
def main() -> None:
    """Benchmarks of artifactd's queue (see bench/README.md).

    Each runs on the server in ARTIFACTD_BENCH_DATABASE_URL (a postgresql://
    URL whose role may create databases), else the local one on 127.0.0.1:5432,
    else an embedded PostgreSQL.
    """
    signal.signal(signal.SIGTERM, _terminated)


@main.command()
@_count("--jobs", 5000, "Jobs per queue.")
@_count("--concurrency", 50, "Worker concurrency (PgQueuer: batch size).")
@_count("--rounds", 3, "Runs per queue; the median counts.")
@click.option(
    "--only",
    "systems",
    multiple=True,
    type=click.Choice(["artifactd", "procrastinate", "pgqueuer", "pgqueuer-asyncpg"]),
    help="Run only these queues (repeatable). Default: every one installed.",
)
@json_option
def throughput(systems: tuple[str, ...], **kwargs: Any) -> None:
    """Jobs/s of one worker process: artifactd beside Procrastinate and PgQueuer."""
    from bench import throughput as bench

    _command("throughput", bench.run, systems=systems or None, **kwargs)


@main.command()
@_count("--samples", 200, "Pickups measured with LISTEN/NOTIFY.")
@_count("--poll-samples", 20, "Pickups measured polling (0: skip).", least=0)
@click.option(
    "--poll-interval-s",
    type=SECONDS,
    default=None,
    help="ARTIFACTD_POLL_INTERVAL_S for both workers (default: the worker's own).",
)
@json_option
def latency(**kwargs: Any) -> None:
    """Insert commit to job start with an idle worker, LISTEN/NOTIFY on and off."""
    from bench import latency as bench

    _command("latency", bench.run, **kwargs)


@main.command()
@_count("--jobs", 320, "Artifacts to generate.")
@click.option(
    "--latency-s",
    default=0.2,
    type=SECONDS,
    show_default=True,
    help="Seconds the fake model takes per answer.",
)
@_count("--workers", 4, "Worker processes.")
@_count("--concurrency", 8, "Slots per worker.")
@_count("--fleet-cap", 16, "ARTIFACTD_FLEET_CONCURRENCY.")
@json_option
def llm(**kwargs: Any) -> None:
    """Several workers, a fake model with fixed latency, a fleet cap."""
    from bench import llm as bench

    slots = kwargs["workers"] * kwargs["concurrency"]
    if kwargs["fleet_cap"] > slots:
        raise click.BadParameter(
            f"{kwargs['fleet_cap']} is more than the workers' {slots} slots: "
            "the cap must be what limits them",
            param_hint="'--fleet-cap'",
        )
    if kwargs["jobs"] < kwargs["fleet_cap"]:
        raise click.BadParameter(
            f"{kwargs['jobs']} jobs cannot fill a cap of {kwargs['fleet_cap']}",
            param_hint="'--jobs'",
        )

    _command("llm", bench.run, **kwargs)


@main.command()
@_count("--finished", 1_000_000, "Finished rows added.", least=0)
@_count("--claims", 200, "Claims timed per round and kind.")
@_count("--batch", 10, "Rows per claim.")
@_count("--rounds", 3, "Rounds per phase.")
@json_option
def scale(**kwargs: Any) -> None:
    """Claim time with no finished rows and with a million."""
    from bench import scale as bench

    _command("scale", bench.run, **kwargs)


@main.command()
@_count("--streams", 64, "Streamed calls in flight at once.")
@click.option(
    "--stream-s",
    default=10.0,
    type=click.FloatRange(min=1.0),
    show_default=True,
    help="Seconds each answer streams for (long enough for all to be open at once).",
)
@json_option
def memory(**kwargs: Any) -> None:
    """Worker RSS with 64 streamed calls in flight."""
    from bench import memory as bench

    _command("memory", bench.run, **kwargs)


if __name__ == "__main__":
    main()
