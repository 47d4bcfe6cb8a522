"""A client generated from KServe's grpc_predict_v2.proto alone (no Triton extensions) works.

The client is generated into tmp_path and runs in a subprocess: its `inference` package is the same as the
server's and tritonclient's, and a separate process keeps the three apart.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from testing.server_process import ServerProcess
from tests.server.grpc.conftest import rows

pytestmark = pytest.mark.slow

PROTO = Path(__file__).parent / "kserve" / "grpc_predict_v2.proto"

CLIENT = textwrap.dedent(
    """
    import json, sys
    import grpc
    import numpy as np
    import grpc_predict_v2_pb2 as pb
    import grpc_predict_v2_pb2_grpc as pb_grpc

    target, x = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.float32)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
    out = {
        "live": stub.ServerLive(pb.ServerLiveRequest()).live,
        "ready": stub.ServerReady(pb.ServerReadyRequest()).ready,
        "model_ready": stub.ModelReady(pb.ModelReadyRequest(name="iris")).ready,
        "server": stub.ServerMetadata(pb.ServerMetadataRequest()).name,
        "inputs": [i.name for i in stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")).inputs],
    }
    # Typed contents (KServe's own client style) ...
    typed = pb.ModelInferRequest(model_name="iris", id="k1")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    typed.outputs.add(name="probabilities")
    answer = stub.ModelInfer(typed)
    out["id"] = answer.id
    out["typed"] = np.frombuffer(answer.raw_output_contents[0], "<f4").tolist()
    # ... and raw contents.
    raw = pb.ModelInferRequest(model_name="iris", raw_input_contents=[x.tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    answer = stub.ModelInfer(raw)
    out["raw"] = {o.name: np.frombuffer(c, "<f4" if o.datatype == "FP32" else "<i8").tolist()
                  for o, c in zip(answer.outputs, answer.raw_output_contents)}
    try:
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"))
    except grpc.RpcError as exc:
        out["error"] = [exc.code().name, exc.details()]
    print(json.dumps(out))
    """
)


def test_kserve_generated_client(grpc_server: ServerProcess, tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed, so the KServe client cannot be generated")
    gen = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp_path}"]
    subprocess.run([*gen, f"--grpc_python_out={tmp_path}", str(PROTO)], check=True, timeout=60)
    (tmp_path / "client.py").write_text(CLIENT)
    x = rows(3, 4, seed=7)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "client.py"), grpc_server.grpc_target, json.dumps(x.tolist())],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert {k: got[k] for k in ("live", "ready", "model_ready", "server", "inputs", "id")} == {
        "live": True, "ready": True, "model_ready": True, "server": "ensemble-serving", "inputs": ["input"],
        "id": "k1",
    }  # fmt: skip
    v1 = grpc_server.client.post("/v1/models/iris:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(np.reshape(got["typed"], (3, 3)), v1["probabilities"], rtol=1e-6)
    np.testing.assert_allclose(
        np.reshape(got["raw"]["probabilities"], (3, 3)), v1["probabilities"], rtol=1e-6
    )
    assert [f"class_{i}" for i in got["raw"]["label"]] == v1["predictions"]
    assert got["error"] == ["NOT_FOUND", "Model 'nope' does not exist."]
