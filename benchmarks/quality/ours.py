"""Our side of the benchmark, through the real tools only: `ensemble-train ensemble` with default flags on
the training rows (a CSV), then `python -m server` on 127.0.0.1 and a free port, the raw test rows sent as
V1 JSON, the answers scored. Nothing here imports training/ or server/: it is what a user does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.quality.scoring import Prediction
from testing.server_process import HOST, Process, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK_ROWS = 256  # rows per request: the server's default max_batch_size
TRAIN_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0


class ToolFailed(RuntimeError):
    """The CLI or the server did not do its part (the message carries the tail of its output)."""


@dataclass
class Trained:
    seconds: float  # wall clock of the whole CLI run (start-up, training, export, checks, writing)
    output: str  # the CLI's stdout (its summary table)
    manifest: dict[str, Any]


def cli_has_flag(flag: str) -> bool:
    """Whether today's `ensemble-train ensemble` takes `flag` (the harness runs before and after it lands)."""
    done = subprocess.run(
        [sys.executable, "-m", "training", "ensemble", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )
    return flag in done.stdout


def _env() -> dict[str, str]:
    """This checkout's code first (a worktree must not run the editable install of another one)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def train(
    csv: Path, target: str, ignore: list[str], repository: Path, name: str, extra: list[str]
) -> Trained:
    """`ensemble-train ensemble` with default flags (plus `extra`, for experiments only)."""
    argv = [sys.executable, "-m", "training", "ensemble", "--data", str(csv), "--target", target]
    argv += ["--repository", str(repository), "--name", name, "--quiet"]
    if ignore:
        argv += ["--ignore", ",".join(ignore)]
    argv += extra
    started = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=REPO_ROOT, env=_env(), timeout=TRAIN_TIMEOUT_S, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise ToolFailed(f"ensemble-train exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    versions = sorted((repository / name).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    manifest = json.loads((versions[-1] / "manifest.json").read_text())
    return Trained(seconds, done.stdout, manifest)


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return _json_value(v.item())
    return v


def request_bodies(manifest: dict[str, Any], X: pd.DataFrame) -> list[dict[str, Any]]:
    """V1 bodies for the rows of X: numeric rows in the model's feature order for a single-tensor model,
    records ``{column: value or null}`` for a model with one input per column."""
    inputs = manifest["inputs"]
    single = len(inputs) == 1 and "kind" not in inputs[0] and inputs[0].get("feature_names")
    bodies = []
    for start_row in range(0, len(X), CHUNK_ROWS):
        part = X.iloc[start_row : start_row + CHUNK_ROWS]
        if single:
            values = part[inputs[0]["feature_names"]].to_numpy(dtype=np.float64)
            rows = [[None if math.isnan(v) else v for v in row] for row in values.tolist()]  # null = missing
            bodies.append({"instances": rows})
        else:
            names = [spec.get("column", spec["name"]) for spec in inputs]
            records = [
                {c: _json_value(v) for c, v in zip(names, row, strict=True)}
                for row in part[names].itertuples(index=False)
            ]
            bodies.append({"instances": records})
    return bodies


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ToolFailed(f"the server answered {exc.code}: {exc.read()[:500]!r}") from None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_loaded(service: Process, name: str, log: Path) -> None:
    """Until the model is ready; a model the server refuses fails at once with the server's reason."""
    deadline = time.perf_counter() + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        if _ready(f"{service.url}/v2/models/{name}/ready"):
            return
        text = log.read_text(errors="replace") if log.exists() else ""
        refused = [line for line in text.splitlines() if f"cannot load {name}" in line]
        if refused or service.proc.poll() is not None:
            raise ToolFailed(f"the server did not load the model: {(refused or [text[-800:]])[0]}")
        time.sleep(0.2)
    raise ToolFailed(f"the server did not become ready in {READY_TIMEOUT_S:.0f} s")


def serve_and_predict(
    repository: Path, name: str, manifest: dict[str, Any], X: pd.DataFrame, log: Path
) -> Prediction:
    """Start the server on the repository, send the test rows, stop it; the answers as a Prediction."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(repository),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    service = Process(argv, port, log, name="server", env={"ENSEMBLE_GRPC_PORT": "0"})
    try:
        _wait_loaded(service, name, log)
        url = f"{service.url}/v1/models/{name}:predict"
        answers = [_post(url, body) for body in request_bodies(manifest, X)]
    finally:
        service.stop()
    if manifest["task"] == "classification":
        proba = np.concatenate([np.asarray(a["probabilities"], dtype=np.float64) for a in answers])
        return Prediction(proba=proba, classes=list(manifest["labels"]))
    values = np.concatenate([np.asarray(a["predictions"], dtype=np.float64).reshape(-1) for a in answers])
    return Prediction(values=values)
