"""Faults in the model repository: broken versions at start-up leave the server live (and the good model
serving) but not ready for them, each with a clear log line; broken versions arriving while serving are
refused and counted while the previous version keeps answering (extends tests/server/test_hot_reload.py,
which covers a wrong sha256 arriving, with an unparsable ONNX file, an invalid manifest and a repository
folder that disappears for a moment)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from testing.repositories import Repository, faulty_repository
from testing.server_process import ServerProcess, started_server, wait_for
from tests.reliability.record import record

BROKEN = {
    "corrupt": "cannot run the members: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF",
    "badsha": "member file member-0.onnx does not match its sha256",
    "badmanifest": "invalid manifest.json: Invalid JSON",
}
X = np.array([[5.1, 3.5, 1.4, 0.2], [-1.0, 0.5, 2.0, -3.0]])


def load_failures(server: ServerProcess, model: str) -> float:
    prefix = f'ensemble_model_load_failures_total{{model="{model}"}}'
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def answers_exactly(server: ServerProcess, repo: Repository) -> bool:
    r = server.client.post("/v1/models/iris:predict", json={"instances": X.tolist()})
    return r.status_code == 200 and np.allclose(r.json()["probabilities"], repo.expected(X), atol=1e-5)


def test_broken_models_at_start_up_leave_the_server_live_not_ready(
    server: ServerProcess, repo: Repository
) -> None:
    c = server.client
    assert c.get("/v2/health/live").status_code == 200
    ready = c.get("/v2/health/ready")
    assert ready.status_code == 503
    reasons = ready.json()["models"]
    assert set(reasons) == set(BROKEN)
    log = server.log.read_text()
    for name, why in BROKEN.items():
        assert why in reasons[name], reasons[name]
        r = c.get(f"/v2/models/{name}/ready")
        assert r.status_code == 503 and why in r.json()["error"], r.text
        assert f"ERROR server.repository: cannot load {name} version 1: {why}" in log
        assert load_failures(server, name) == 1
        record("faults", f"start-up with {name}", "live, not ready, clear log line, counted",
               f"ready 503, model 503 '{why}', logged, load failures 1")  # fmt: skip
    assert "Traceback" not in log
    assert answers_exactly(server, repo)


def test_broken_new_versions_while_serving_are_refused_and_counted(tmp_path: Path) -> None:
    staging = faulty_repository(tmp_path / "staging")
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(staging.root / "iris", root / "iris")
    repo = Repository(root, staging.weights, staging.tasks)
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0.1"}
    server = started_server(root, env, tmp_path / "server.log")
    try:
        assert server.client.get("/v2/health/ready").status_code == 200
        for version, (source, why) in enumerate(
            [("corrupt", BROKEN["corrupt"]), ("badmanifest", "invalid manifest.json")], start=2
        ):
            # A broken version renamed into place (as a writer would) under the served model's name.
            folder = tmp_path / f"next-{version}"
            shutil.copytree(staging.root / source / "1", folder)
            manifest = folder / "manifest.json"
            manifest.write_text(
                manifest.read_text()
                .replace(f'"{source}"', '"iris"')
                .replace('"version": 1', f'"version": {version}')
            )
            os.rename(folder, root / "iris" / str(version))
            wait_for(
                lambda v=version: load_failures(server, "iris") == v - 1, f"failure of version {version}"
            )
            assert answers_exactly(server, repo)  # version 1 keeps serving
            model = server.client.get("/v2/models/iris").json()
            assert model["versions"] == ["1"], model
            r = server.client.get(f"/v2/models/iris/versions/{version}")
            assert r.status_code == 503 and why in r.json()["error"], r.text
            record("faults", f"new version {version} while serving: {source}", "refused, counted, v1 serves",
                   f"503 '{why}', load failures {version - 1}, v1 answers exactly")  # fmt: skip

        # The repository folder disappears for a moment (an unmounted volume): what is loaded keeps serving.
        os.rename(root, tmp_path / "away")
        time.sleep(0.5)
        still = answers_exactly(server, repo)
        os.rename(tmp_path / "away", root)
        time.sleep(0.5)
        assert still and answers_exactly(server, repo)
        record("faults", "repository folder gone for 0.5 s", "loaded versions keep serving",
               "v1 answered exactly during and after")  # fmt: skip
        assert server.proc.poll() is None
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "cannot load iris version 2: cannot run the members" in log
    assert "cannot load iris version 3: invalid manifest.json" in log
    assert "Traceback" not in log
