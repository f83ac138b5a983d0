"""Benchmarks of artifactd's queue, run beside the queues a team might pick.

Each benchmark starts what it needs (a fresh database on the benchmark
server, worker processes, a loopback fake LLM), measures, drops its
databases and returns one JSON-ready dict. ``python -m bench`` is the command
line; ``bench/README.md`` has the latest results and how to read them.
"""
