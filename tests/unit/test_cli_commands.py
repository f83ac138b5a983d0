"""The command line imports a command's module only when that command runs.

A worker process is ``artifactd run``: whatever the other commands import
(SQLAlchemy for ``notify``, the Markdown renderer for ``show``) would sit in
the RSS of every worker for nothing. That a worker process imports none of it
is checked on a real one in ``tests/acceptance/test_cli.py``.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

import worker.cli
from worker.cli import _COMMAND_MODULES, main


def test_command_map__names_each_module_with_the_commands_it_registers() -> None:
    modules = sorted(
        info.name
        for info in pkgutil.iter_modules(worker.cli.__path__)
        if hasattr(importlib.import_module(f"worker.cli.{info.name}"), "register")
    )
    registered: dict[str, str] = {}
    for module in modules:
        group = click.Group()
        importlib.import_module(f"worker.cli.{module}").register(group)
        registered.update({name: module for name in group.commands})

    assert registered == _COMMAND_MODULES


def test_main__lists_every_command_and_resolves_each_to_itself() -> None:
    ctx = click.Context(main)

    names = main.list_commands(ctx)

    assert names == sorted(_COMMAND_MODULES)
    for name in names:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "no-such-command") is None
