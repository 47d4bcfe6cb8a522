from pathlib import Path

import numpy as np
import pytest

from server.runtime import (
    CPU,
    CUDA,
    TRT,
    choose_providers,
    default_intra_op_threads,
    make_session,
    usable_cpus,
)
from testing.repositories import write_version


def test_auto_prefers_tensorrt_then_cuda_then_cpu_with_device_id() -> None:
    assert choose_providers("auto", [TRT, CUDA, CPU], 1) == [
        (TRT, {"device_id": 1}),
        (CUDA, {"device_id": 1, "use_tf32": 0}),
        CPU,
    ]
    assert choose_providers("auto", [CUDA, CPU]) == [(CUDA, {"device_id": 0, "use_tf32": 0}), CPU]
    assert choose_providers("cuda", [TRT, CUDA, CPU]) == [(CUDA, {"device_id": 0, "use_tf32": 0}), CPU]
    assert choose_providers("cpu", [TRT, CUDA, CPU]) == [CPU]


def test_gpu_request_without_gpu_build_falls_back_to_cpu() -> None:
    assert choose_providers("cuda", ["AzureExecutionProvider", CPU]) == [CPU]
    assert choose_providers("tensorrt", [CPU]) == [CPU]


def test_thread_sizing() -> None:
    assert 1 <= usable_cpus() <= (len(__import__("os").sched_getaffinity(0)))
    assert default_intra_op_threads(2) == 1
    assert default_intra_op_threads(16) == 16
    assert default_intra_op_threads(16, parallel_sessions=4) == 4


def test_session_reports_the_provider_that_runs(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1, members=1)
    session, info = make_session(tmp_path / "m" / "1" / "member-0.onnx", "auto", 0, 1)
    assert info.provider == session.get_providers()[0] == CPU
    assert info.device == "cpu"
    out = session.run(None, {"input": np.zeros((2, 4), np.float32)})[0]
    assert out.shape == (2, 3)


def test_tensorrt_is_offered_only_where_its_libraries_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.runtime as runtime

    monkeypatch.setattr(runtime, "tensorrt_loadable", lambda: False)
    assert runtime.loadable_providers([TRT, CUDA, CPU]) == [CUDA, CPU]
    monkeypatch.setattr(runtime, "tensorrt_loadable", lambda: True)
    assert runtime.loadable_providers([TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
