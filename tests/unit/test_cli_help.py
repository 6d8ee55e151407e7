"""Every option of every command says what it does and its default; `--version` works."""
from __future__ import annotations

import argparse
import subprocess

import pytest
from conftest import BIN

from nnunet_xfer import __version__
from nnunet_xfer.cli import build_parser


def _options() -> list[tuple[str, argparse.Action]]:
    """(command, action) of every option and positional of every command, the top level too."""
    found = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, sub_name)
            elif not isinstance(action, argparse._HelpAction):
                found.append((name, action))
    walk(build_parser(), "nnunet-xfer")
    return found


@pytest.mark.parametrize("command, action", _options(),
                         ids=lambda v: v if isinstance(v, str) else "/".join(v.option_strings or [v.dest]))
def test_every_option_has_help_with_its_default(command, action):
    """`pretrain --help` had no line for -s, -p, -c, --iterations, --batch-size, --lr, --seed,
    --resume. Hidden options (argparse.SUPPRESS) are old spellings kept for compatibility."""
    name = "/".join(action.option_strings) or action.dest
    assert action.help and action.help.strip(), f"{command} {name} has no help"
    if action.help == argparse.SUPPRESS:
        return
    default = action.default
    if default not in (None, False, argparse.SUPPRESS, "", []) and action.nargs != 0:
        assert "default" in action.help, f"{command} {name}: help does not give the default {default!r}"


def test_version():
    proc = subprocess.run([str(BIN / "nnunet-xfer"), "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"nnunet-xfer {__version__}"
