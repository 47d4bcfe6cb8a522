"""The committed generated code is what the committed .proto files make, and it shares no pool."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "server" / "grpc" / "generated"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed")
def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "server/grpc/protos/generate.py"), str(tmp_path)], check=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in GENERATED.iterdir() if p.is_file())
    for name in made:
        assert (tmp_path / name).read_text() == (GENERATED / name).read_text(), f"run `make grpc-gen`: {name}"


def test_tritonclient_imports_beside_the_generated_code() -> None:
    """Both define the `inference` package; the private pool lets one process hold the two."""
    from google.protobuf import descriptor_pool

    from server.grpc.generated import grpc_service_pb2 as ours

    theirs = pytest.importorskip("tritonclient.grpc.service_pb2")
    assert ours.ModelInferRequest.DESCRIPTOR.file.pool is not descriptor_pool.Default()
    msg = ours.ModelInferRequest(model_name="iris", raw_input_contents=[b"\0" * 4])
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    assert theirs.ModelInferRequest.FromString(msg.SerializeToString()).inputs[0].name == "x"
