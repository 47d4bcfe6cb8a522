"""The README's tabular quick start works as written (the repository folder moved into a temporary one)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from server.manifest import read_manifest
from training.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "ensemble-train inspect" in b and "penguins_like.csv" in b)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_table_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    inspect, ensemble = _commands()
    assert inspect[:2] == ["ensemble-train", "inspect"] and ensemble[:2] == ["ensemble-train", "ensemble"]
    assert main(inspect[1:]) == 0
    argv = ensemble[1:]
    argv[argv.index("--repository") + 1] = str(tmp_path / "model_repository")
    assert main([*argv, "--quiet"]) == 0
    manifest = read_manifest(tmp_path / "model_repository" / "penguins" / "1")
    assert manifest.is_table and manifest.metrics["ensemble"]["accuracy"] > 0.5
