"""The ``artifactd`` command line.

Each command lives in a module of this package named for what it does;
``main`` is the console script. Exit codes are in ``worker.cli.common``.
"""

from __future__ import annotations

import importlib

import click

# One module per command group; each defines ``register(group)``.
_COMMAND_MODULES = (
    "migrate",
    "run",
    "enqueue",
    "inspect",
    "operate",
    "doctor",
    "notify",
    "api",
    "demo",
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="artifactd")
def main() -> None:
    """artifactd: LLM document generation as background work on PostgreSQL.

    Exit codes: 0 done, 1 failure, 2 bad usage or settings, 3 database
    unreachable.
    """


for _name in _COMMAND_MODULES:
    importlib.import_module(f"worker.cli.{_name}").register(main)
