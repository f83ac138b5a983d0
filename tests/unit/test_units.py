"""The files in ``deploy/``: systemd units and the environment file example.

``systemd-analyze verify`` checks what systemd itself would refuse or ignore.
It also insists that ExecStart names an existing executable, and some
versions that User= exists, so the test verifies copies in ``tmp_path``
whose ExecStart points at this checkout's ``artifactd`` (or the Python
running the tests) and whose User=/Group= are the current user's. The
hardening score is read from ``systemd-analyze security --offline`` on copies
that keep the real User=. Without ``systemd-analyze`` those two tests skip;
everything else here needs nothing but the files.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from shared.settings import ENV_NAMES, Settings, load_settings
from worker.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = (
    "artifactd-worker.service",
    "artifactd-worker@.service",
    "artifactd-api.service",
    "artifactd-notify.service",
)
WORKER_UNITS = ("artifactd-worker.service", "artifactd-worker@.service")
INSTALLED_BINARY = "/opt/artifactd/.venv/bin/artifactd"
# systemd's exposure score: 0 is locked down, 10 is fully exposed; the
# shipped units sit well under 2 on systemd 252.
MAX_EXPOSURE = 2.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def directives(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeats kept in order."""
    section = ""
    found = []
    for raw in (DEPLOY / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def directive(unit: str, key: str) -> str:
    values = [v for _, k, v in directives(unit) if k == key]
    assert values, f"{unit} has no {key}="
    return values[-1]


def seconds(value: str) -> float:
    """A systemd time span such as ``60``, ``90s``, ``2min`` or ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def local_executable() -> str:
    script = Path(sys.executable).with_name("artifactd")
    return str(script if script.exists() else Path(sys.executable))


def copy_units(target: Path, *, as_current_user: bool) -> list[Path]:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    copies = []
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace(INSTALLED_BINARY, local_executable())
        if as_current_user:
            text = re.sub(r"(?m)^User=.*$", f"User={user}", text)
            text = re.sub(r"(?m)^Group=.*$", f"Group={group}", text)
        copy = target / unit
        copy.write_text(text)
        copies.append(copy)
    return copies


def env_example() -> list[tuple[str, str, bool]]:
    """(name, value, commented) for each ``NAME=`` or ``#NAME=`` line."""
    found = []
    for line in (DEPLOY / "artifactd.env.example").read_text().splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            found.append((match[2], match[3], match[1] == "#"))
    return found


# -- systemd itself ------------------------------------------------------------


@needs_systemd_analyze
def test_units__pass_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = copy_units(tmp_path, as_current_user=True)
    instance = tmp_path / "artifactd-worker@9101.service"  # from the template beside it

    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, copies), str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    complaints = [line for line in result.stderr.splitlines() if "artifactd" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_units__are_hardened(tmp_path: Path, unit: str) -> None:
    copy_units(tmp_path, as_current_user=False)

    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--no-pager",
            str(tmp_path / unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


# -- what the units promise ------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_units__share_the_hardening_and_restart_policy(unit: str) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "User": "artifactd",
    }
    data_dir = {name: value for name, value, _ in env_example()}["ARTIFACTD_DATA_DIR"]

    found = {key: directive(unit, key) for key in expected}
    env_files = [v for _, k, v in directives(unit) if k == "EnvironmentFile"]

    assert found == expected
    assert env_files[0] == "/etc/artifactd/artifactd.env"
    assert directive(unit, "ReadWritePaths") == data_dir
    assert directive(unit, "ExecStart").startswith(INSTALLED_BINARY + " ")


@pytest.mark.parametrize("unit", WORKER_UNITS)
def test_worker_units__notify_watchdog_and_a_stop_timeout_beyond_the_grace(
    unit: str,
) -> None:
    grace_s = Settings.model_fields["shutdown_grace_s"].default

    stop_s = seconds(directive(unit, "TimeoutStopSec"))

    assert directive(unit, "Type") == "notify"
    assert directive(unit, "NotifyAccess") == "main"
    assert seconds(directive(unit, "WatchdogSec")) > 0
    assert seconds(directive(unit, "TimeoutStartSec")) > 0
    # Room for the grace period, then handing unfinished rows back.
    assert stop_s >= grace_s + 10
    assert directive(unit, "KillMode") == "mixed"


def test_units__run_commands_and_options_the_cli_has() -> None:
    for unit in UNITS:
        argv = directive(unit, "ExecStart").split()[1:]
        command = main.get_command(click.Context(main), argv[0])
        assert command is not None, f"{unit}: no `artifactd {argv[0]}`"
        options = {
            opt for param in command.params for opt in getattr(param, "opts", [])
        }
        for arg in argv[1:]:
            if arg.startswith("--"):
                assert arg in options, f"{unit}: `artifactd {argv[0]}` has no {arg}"


def test_worker_template__instance_name_is_the_metrics_port() -> None:
    unit = "artifactd-worker@.service"

    exec_start = directive(unit, "ExecStart")

    assert exec_start.endswith(" run --metrics-port %i")
    assert "/etc/artifactd/worker-%i.env" in [
        v.lstrip("-") for _, k, v in directives(unit) if k == "EnvironmentFile"
    ]


# -- the environment file example ---------------------------------------------------


def test_env_example__lists_every_setting_once() -> None:
    names = [name for name, _, _ in env_example()]

    assert sorted(names) == sorted(ENV_NAMES.values())


def test_env_example__commented_values_are_the_defaults() -> None:
    field_of = {env: field for field, env in ENV_NAMES.items()}

    for name, shown, commented in env_example():
        if not commented:
            continue
        field = field_of[name]
        default = Settings.model_fields[field].default
        if shown == "":
            assert default is None, f"{name}: shown empty, default is {default!r}"
        else:
            parsed = getattr(load_settings(**{field: shown}), field)
            assert parsed == default, f"{name}: shown {shown!r}, default is {default!r}"


def test_env_example__set_values_are_valid_settings() -> None:
    field_of = {env: field for field, env in ENV_NAMES.items()}
    given = {field_of[n]: v for n, v, commented in env_example() if not commented}

    settings = load_settings(**given)

    assert settings.database_url is not None
    assert str(settings.data_dir) == "/var/lib/artifactd"
