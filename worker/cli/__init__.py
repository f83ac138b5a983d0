"""The ``artifactd`` command line.

Each command lives in a module of this package named for what it does;
``main`` is the console script. Exit codes are in ``worker.cli.common``.
"""

from __future__ import annotations

import importlib

import click

# Each command and the module that defines it (``register(group)`` adds all of
# that module's commands). A command imports only its own module: ``artifactd
# run``, the worker, then carries neither SQLAlchemy (``notify``) nor the
# Markdown renderer (``show``), about 16 MB less RSS per worker process.
_COMMAND_MODULES: dict[str, str] = {
    "migrate": "migrate",
    "run": "run",
    "enqueue": "enqueue",
    "list": "inspect",
    "show": "inspect",
    "cancel": "operate",
    "prune": "operate",
    "requeue": "operate",
    "stats": "operate",
    "doctor": "doctor",
    "notify": "notify",
    "notifications": "notify",
    "api": "api",
    "demo": "demo",
}


class _CommandsOnDemand(click.Group):
    """A group that imports a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"worker.cli.{module}").register(self)
        return self.commands.get(cmd_name)


@click.group(
    cls=_CommandsOnDemand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="artifactd")
def main() -> None:
    """artifactd: LLM document generation as background work on PostgreSQL.

    Exit codes: 0 done, 1 failure, 2 bad usage or settings, 3 database
    unreachable.
    """
