"""The serving image, built and run with podman (tests/image/run_image_test.py does the work)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "image" / "run_image_test.py"
BASE_TARBALL = ROOT / ".cache" / "image" / "ensemble-base-bookworm.tar"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the image test runs rootful podman; run it as root"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc, see .ci/apt-packages.txt)"
    if shutil.which("mmdebstrap") is None and not BASE_TARBALL.exists():
        return "mmdebstrap is not installed and no base image tarball is cached under .cache/image"
    if not (ROOT / "server" / "cli.py").exists():
        return "server/cli.py is absent: ensemble-serve cannot start in the image yet"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_builds_serves_and_drains() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=880
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"{proc.stderr.strip()}\n--- stdout ---\n{proc.stdout[-3000:]}"
    assert "image-test OK" in proc.stdout
