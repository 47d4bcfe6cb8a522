"""The tritonclient example in docs/clients.md runs as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from testing.server_process import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def _python_blocks() -> list[str]:
    text = (ROOT / "docs" / "clients.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("model", ["iris", "reg"])
def test_python_example_runs(server: ServerProcess, model: str) -> None:
    blocks = _python_blocks()
    assert len(blocks) == 1
    env = {**os.environ, "ENSEMBLE_URL": f"127.0.0.1:{server.port}", "ENSEMBLE_MODEL": model}
    run = subprocess.run(
        [sys.executable, "-c", blocks[0]], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    outputs = ["probabilities", "label", "spread"] if model == "iris" else ["prediction", "spread"]
    assert [line.split(" ", 1)[0] for line in lines[: len(outputs)]] == outputs
    if model == "iris":
        assert lines[3].startswith("classes: ['class_")
    assert lines[-1] == "max_batch_size: 64"  # ENSEMBLE_MAX_BATCH_SIZE in conftest
