"""The baseline: a typical FastAPI + pydantic + onnxruntime endpoint, as most model services start out.

A pydantic request model, a sync handler (FastAPI runs it in its thread pool), and the ensemble's member
sessions run one after another on every request, with onnxruntime's default session options. Same V1 body
and path as our server, so the same wrk payload hits both. Point it at a version folder:
``BASELINE_MODEL_DIR=repo/bench/1 python -m uvicorn benchmarks.baseline_fastapi:app``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", "model_repository/digits/1"))
SESSIONS = [
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for path in sorted(MODEL_DIR.glob("member-*.onnx"))
]
INPUT = SESSIONS[0].get_inputs()[0].name if SESSIONS else "input"

app = FastAPI(title="baseline")


class PredictRequest(BaseModel):
    instances: list[list[float]]


class PredictResponse(BaseModel):
    predictions: list[int]
    probabilities: list[list[float]]


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": bool(SESSIONS)}


@app.post("/v1/models/{model}:predict", response_model=PredictResponse)
def predict(model: str, request: PredictRequest) -> PredictResponse:
    x = np.asarray(request.instances, dtype=np.float32)
    probabilities = np.mean([s.run(None, {INPUT: x})[0] for s in SESSIONS], axis=0)
    return PredictResponse(
        predictions=probabilities.argmax(axis=1).tolist(), probabilities=probabilities.tolist()
    )
