"""Request bodies and rows for tests that talk to a server over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np


def rows(n: int, features: int, seed: int = 0) -> np.ndarray:
    """`n` standard-normal FP32 rows of `features` values, the same for the same seed."""
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def v2_body(x: np.ndarray | list[Any], name: str = "input") -> dict[str, Any]:
    """A V2 JSON infer request carrying rows `x` as one FP32 tensor."""
    a = np.asarray(x, dtype=np.float64)
    tensor = {"name": name, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
    return {"inputs": [tensor]}


def v1_predict(client: httpx.Client, model: str, x: np.ndarray) -> dict[str, Any]:
    """POST rows `x` to the simple JSON route; the answer must be a 200."""
    r = client.post(f"/v1/models/{model}:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    return r.json()
