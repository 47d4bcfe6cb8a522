"""schemathesis against the server's own OpenAPI document (``/openapi.json``) on a real process: no 5xx.

Two bounded runs of the CLI: path parameters free (mostly unknown names: 404s), then pinned to the served
model and version so that the generated requests reach the handlers. Each run is capped by
``--max-examples`` and ``--max-time``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.server_process import ServerProcess
from tests.reliability.record import record

pytestmark = pytest.mark.slow

MAX_SECONDS = 15


def schemathesis() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    if not found:
        pytest.skip("schemathesis is not installed (it is in the dev extra: pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("pinned", [False, True], ids=["free-paths", "pinned-paths"])
def test_openapi_fuzzing_finds_no_server_error(
    open_server: ServerProcess, tmp_path: Path, pinned: bool
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "iris"\n"path.version" = "1"\n' if pinned else "")
    cmd = [
        schemathesis(), "--config-file", str(config), "run", f"{open_server.url}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", "20", "--max-time", str(MAX_SECONDS),
        "--seed", "7", "--request-timeout", "10",
    ]  # fmt: skip
    # In tmp_path: schemathesis keeps a cache folder (.schemathesis/) in its working directory.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_SECONDS + 40, cwd=tmp_path)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    found = re.search(r"(\d+) generated, (\d+) passed", summary)
    cases = found.group(0) if found else "?"
    record("properties", f"schemathesis /openapi.json, {'pinned' if pinned else 'free'} path parameters",
           "no 5xx", f"exit {done.returncode}: {cases}")  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert found and int(found.group(1)) > 100 and found.group(1) == found.group(2), summary
    assert open_server.proc.poll() is None
