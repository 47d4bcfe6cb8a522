"""With an NVIDIA GPU and onnxruntime-gpu: the CUDA provider really runs, and agrees with the CPU.

Run by `make gpu-check`; skipped (with the reason) where onnxruntime offers no CUDA provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from testing.repositories import Repository
from testing.server_process import ServerProcess

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.gpu

if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip(
        f"onnxruntime {ort.__version__} offers no CUDAExecutionProvider ({ort.get_available_providers()})",
        allow_module_level=True,
    )

N_FEATURES, WIDTH = 64, 10


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    repo = Repository(tmp_path_factory.mktemp("gpu-repo"))
    repo.add("gpu", 1, n_features=N_FEATURES, width=WIDTH, members=5, hidden=[256, 256])
    return repo


def _start(root: Path, device: str, log: Path) -> ServerProcess:
    proc = ServerProcess(root, {"ENSEMBLE_DEVICE": device}, log)
    proc.wait_live(60)
    proc.wait_loaded(180)
    return proc


@pytest.fixture(scope="module")
def servers(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("gpu-logs")
    started: dict[str, ServerProcess] = {}
    try:
        for device in ("cuda", "cpu", "auto"):
            started[device] = _start(repo.root, device, logs / f"{device}.log")
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def test_cuda_provider_is_the_one_that_runs(servers: dict) -> None:
    gpu = servers["cuda"]
    assert gpu.client.get("/v2/health/ready").status_code == 200, gpu.log.read_text()[-2000:]
    assert gpu.client.get("/v2").json()["providers"] == ["CUDAExecutionProvider"]
    meta = gpu.client.get("/v2/models/gpu").json()
    assert "CUDAExecutionProvider" in str(meta), meta
    metrics = gpu.client.get("/metrics").text
    assert 'provider="CUDAExecutionProvider"' in metrics


def test_auto_device_picks_a_gpu_provider_that_loads(servers: dict) -> None:
    """auto: TensorRT where libnvinfer loads, else CUDA; never a silent fall back to the CPU on a GPU host."""
    auto = servers["auto"]
    running = auto.client.get("/v2").json()["providers"]
    assert running in (["TensorrtExecutionProvider"], ["CUDAExecutionProvider"]), running


def test_cuda_answers_equal_cpu_answers_and_numpy(servers: dict, repo: Repository) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, N_FEATURES)).astype(np.float32)
    expected = repo.expected(x, "gpu")
    answers = {}
    for device, proc in servers.items():
        body = {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        r = proc.client.post("/v2/models/gpu/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
        answers[device] = out["probabilities"]
    np.testing.assert_allclose(answers["cuda"], answers["cpu"], atol=1e-5)
    np.testing.assert_allclose(answers["cuda"], expected, atol=1e-5)
    np.testing.assert_allclose(answers["auto"], answers["cpu"], atol=1e-5)


def test_concurrent_requests_on_cuda_each_get_their_own_rows(servers: dict, repo: Repository) -> None:
    gpu = servers["cuda"]
    rng = np.random.default_rng(11)
    batches = [rng.standard_normal((int(n), N_FEATURES)).astype(np.float32) for n in rng.integers(1, 20, 48)]

    def call(x: np.ndarray) -> np.ndarray:
        r = gpu.client.post("/v1/models/gpu:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["probabilities"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, batches))
    for x, got in zip(batches, results, strict=True):
        want = repo.expected(x, "gpu")
        np.testing.assert_allclose(got, want, atol=1e-5)
