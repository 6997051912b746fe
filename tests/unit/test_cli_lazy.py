"""The command line imports a command's module only when that command is used, and `canaryws serve`
on a flags file imports only what it serves with (a restart's time)."""

from __future__ import annotations

import subprocess
import sys

import click

from canaryws.cli import _LAZY_COMMANDS, main


def test_importing_the_command_line_leaves_the_other_commands_unimported() -> None:
    code = ("import sys, canaryws.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith(('canaryws.cli.', 'numpy', 'scipy', "
            "'canaryws.analysis'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['canaryws.cli.tokens']"  # `token` registers its commands eagerly


def test_every_lazy_command_resolves_to_the_command_of_its_name() -> None:
    ctx = click.Context(main)
    assert set(_LAZY_COMMANDS) <= set(main.list_commands(ctx))
    for name in _LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "no-such-command") is None


def test_serving_from_a_flags_file_imports_neither_the_unleash_sdk_nor_the_analysis() -> None:
    code = ("import sys, canaryws.cli, canaryws.serve\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('aiohttp', 'UnleashClient', "
            "'numpy', 'scipy', 'canaryws.analysis', 'canaryws.adapters.flags.unleash_source'))}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
