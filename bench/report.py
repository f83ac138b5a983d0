"""Readable tables for benchmark results (the JSON is the source of truth)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table


def show(result: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: no 80-column default
            console = Console(width=120)
    table = _TABLES[result["benchmark"]](result)
    console.print(table)
    goal = result.get("goal", {})
    if goal.get("met") is None and "not_judged" in goal:
        console.print(f"goal not judged: {goal['not_judged']}")
    elif "met" in goal:
        console.print(
            f"goal met: {'yes' if goal['met'] else 'NO'} ({_goal_text(goal)})"
        )
    m = result["machine"]
    console.print(
        f"{m['cpus']} × {m['cpu_model']}, PostgreSQL {m['postgresql']}, "
        f"load {_load(m['load_average'])} before, {_load(m['load_average_after'])} after, "
        f"CPU steal {_maybe(m.get('cpu_steal_pct'), '{:.1f}%') or 'unknown'}, "
        f"{result['elapsed_s']} s in all",
        style="dim",
    )


def _maybe(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _load(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _throughput(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"throughput: {result['jobs']} jobs, concurrency {result['concurrency']}, "
        f"{result['rounds']} round(s)"
    )
    for column in (
        "queue",
        "jobs/s",
        "each round",
        "drain s",
        "wall s",
        "worker CPU ms/job",
        "db CPU ms/job",
        "artifactd ×",
    ):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for name, r in result["results"].items():
        label = name
        ratio = result["ratios"].get(name)
        table.add_row(
            label,
            f"{r['jobs_per_s']:,.0f}",
            " ".join(f"{x:.0f}" for x in r["jobs_per_s_each"]),
            f"{r['drain_s']:.2f}",
            f"{r['wall_s']:.2f}",
            _maybe(r["worker_cpu_ms_per_job"], "{:.3f}"),
            _maybe(r["db_cpu_ms_per_job"], "{:.3f}"),
            f"{ratio:.2f}" if ratio is not None else "",
        )
    return table


def _latency(result: dict[str, Any]) -> Table:
    table = Table(title="pickup latency: insert commit to claim, idle worker")
    for column in (
        "worker",
        "samples",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "mean ms",
    ):
        table.add_column(column, justify="left" if column == "worker" else "right")
    labels = {"notify": "LISTEN/NOTIFY", "poll": "polling only"}
    for mode, r in result["results"].items():
        table.add_row(
            labels.get(mode, mode),
            str(r["samples"]),
            *(
                f"{r[k]:.2f}"
                for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
            ),
        )
    return table


def _llm(result: dict[str, Any]) -> Table:
    r = result["results"]
    table = Table(
        title=f"llm: {result['jobs']} jobs, {result['latency_s']} s model, "
        f"{result['workers']} workers × {result['concurrency']}, fleet cap {result['fleet_cap']}",
        caption="lost ms: time below the cap in the ramp / between jobs / drain, "
        "and the last final write; steal: the host's share of this machine's "
        "CPUs while the artifacts ran",
    )
    for column in (
        "succeeded",
        "max in flight",
        "total s",
        "ideal s",
        "× ideal",
        "cap used",
        "request ms",
        "lease overhead ms",
        "lost ms",
        "steal",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(r["succeeded"]),
        f"{r['max_in_flight']} (cap {result['fleet_cap']})",
        f"{r['total_s']:.2f}",
        f"{r['ideal_s']:.2f}",
        f"{r['ratio_to_ideal']:.3f}",
        f"{100 * r['cap_utilisation']:.0f}%",
        f"{1000 * r['mean_request_s']:.1f}",
        f"{r['lease_overhead_ms']:.1f}",
        "/".join(
            f"{r['lost_ms'][phase]:.0f}"
            for phase in ("ramp", "between", "drain", "last_write")
        ),
        _maybe(r.get("cpu_steal_pct"), "{:.1f}%"),
    )
    return table


def _scale(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"scale: {result['claims']} claims × {result['rounds']} rounds of "
        f"{result['batch']} rows, before and after {result['finished_rows']:,} finished rows"
    )
    for column in ("claim", "finished rows", "p50 ms", "p90 ms", "p99 ms", "ratio p50"):
        table.add_column(column, justify="left" if column == "claim" else "right")
    for kind, label in (("claim", "plain"), ("capped_claim", "fleet-capped")):
        for phase, rows in (
            ("empty", "0"),
            ("finished", f"{result['finished_rows']:,}"),
        ):
            r = result["results"][phase][kind]
            table.add_row(
                label,
                rows,
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{result['ratios'][kind]:.2f}" if phase == "finished" else "",
            )
    return table


def _memory(result: dict[str, Any]) -> Table:
    r = result["results"]
    table = Table(
        title=f"memory: one worker, {result['streams']} answers streaming for "
        f"{result['stream_s']:g} s each"
    )
    for column in (
        "in flight",
        "idle MB",
        "peak MB",
        "after MB",
        "samples",
        "succeeded",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(r["max_in_flight"]),
        f"{r['idle_rss_mb']:.1f}",
        f"{r['peak_rss_mb']:.1f}",
        f"{r['after_rss_mb']:.1f}",
        str(r["samples"]),
        str(r["succeeded"]),
    )
    return table


_TABLES: dict[str, Callable[[dict[str, Any]], Table]] = {
    "throughput": _throughput,
    "latency": _latency,
    "llm": _llm,
    "scale": _scale,
    "memory": _memory,
}


def _goal_text(goal: dict[str, Any]) -> str:
    """``{"ratio_at_most": 1.5}`` as ``ratio ≤ 1.5``, for the line under a table."""
    parts = []
    for key, value in goal.items():
        for suffix, sign in (("_at_most", "≤"), ("_at_least", "≥")):
            if key.endswith(suffix):
                parts.append(
                    f"{key.removesuffix(suffix).replace('_', ' ')} {sign} {value:g}"
                )
    return ", ".join(parts)
