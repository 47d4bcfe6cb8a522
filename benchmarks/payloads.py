"""Request bodies for the three protocols the harness measures, shaped by the model's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.wrk_runner import Payload

PROTOCOLS = ("v1", "v2json", "v2bin")


def rows_for(mean: list[float], std: list[float], n_rows: int, seed: int = 0) -> np.ndarray:
    """Raw feature rows around the training distribution (so the standardized values look real)."""
    rng = np.random.default_rng(seed)
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (m + s * rng.normal(size=(n_rows, m.size))).astype(np.float32)


def body(protocol: str, x: np.ndarray, input_name: str, outputs: list[str]) -> tuple[bytes, int | None]:
    """(body, Inference-Header-Content-Length or None) for one request carrying rows `x`."""
    # Round to 4 decimals: what a client typically sends in JSON, and keeps bodies realistic in size.
    values = np.round(x, 4).tolist()
    if protocol == "v1":
        return json.dumps({"instances": values}).encode(), None
    shape = list(x.shape)
    if protocol == "v2json":
        doc = {"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32", "data": values}]}
        return json.dumps(doc).encode(), None
    if protocol == "v2bin":
        raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
        doc = {
            "inputs": [
                {
                    "name": input_name,
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            # Ask for every output in binary, as perf_analyzer and tritonclient's binary mode do.
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
        header = json.dumps(doc).encode()
        return header + raw, len(header)
    raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")


def write_payload(folder: Path, protocol: str, x: np.ndarray, input_name: str, outputs: list[str]) -> Payload:
    data, header_length = body(protocol, x, input_name, outputs)
    path = Path(folder) / f"{protocol}-{x.shape[0]}.body"
    path.write_bytes(data)
    content_type = "application/octet-stream" if header_length is not None else "application/json"
    return Payload(path, content_type, header_length)


def url_path(protocol: str, model: str) -> str:
    return f"/v1/models/{model}:predict" if protocol == "v1" else f"/v2/models/{model}/infer"
