"""`python -m benchmarks <command>`: one entry point that names every benchmark and refuses unknown ones."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import COMMANDS, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_without_a_command_it_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'nonsense'" in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_a_module_with_a_main(command: str) -> None:
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.main)


def test_a_command_gets_its_own_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "compare", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks compare") and "--cells" in done.stdout
