"""CUDA (and TensorRT, where present) execution providers against the CPU one, in process.

Builds a synthetic ensemble shaped like the default model (5 BatchNorm-MLP-sized members, 64 features,
10 classes), runs each provider on the same inputs, checks they agree, and prints one markdown table of
median milliseconds per call and rows/s. Run by `make gpu-check` (`python -m benchmarks gpu`); installs
nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort

from testing.members import member_graph, random_weights

N_FEATURES, HIDDEN, N_CLASSES, MEMBERS = 64, 256, 10, 5


def mlp_member(seed: int) -> onnx.ModelProto:
    """A 3-layer MLP with softmax: the inference-time shape of a trained BatchNorm MLP (BN folded)."""
    rng = np.random.default_rng(seed)
    return member_graph(random_weights(rng, [N_FEATURES, HIDDEN, HIDDEN, N_CLASSES]), "classification")


def sessions(provider: str) -> list[ort.InferenceSession]:
    opts = ort.SessionOptions()
    out = []
    for seed in range(MEMBERS):
        # TF32 off: the server's default, so the figures are for answers that match the CPU's.
        options = {"use_tf32": "0"} if provider == "CUDAExecutionProvider" else {}
        s = ort.InferenceSession(mlp_member(seed).SerializeToString(), opts, providers=[(provider, options)])
        actual = s.get_providers()[0]
        if actual != provider:
            raise RuntimeError(f"asked for {provider} but onnxruntime runs {actual}")
        out.append(s)
    return out


def run_ensemble(members: list[ort.InferenceSession], x: np.ndarray) -> np.ndarray:
    return np.mean([m.run(None, {"input": x})[0] for m in members], axis=0)


def median_ms(members: list[ort.InferenceSession], x: np.ndarray, seconds: float) -> float:
    for _ in range(5):
        run_ensemble(members, x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(times) < 2000:
        t0 = time.perf_counter()
        run_ensemble(members, x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per cell")
    parser.add_argument("--batches", default="1,64,256,1024,8192")
    args = parser.parse_args(argv)
    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}; available providers: {available}")
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    providers = [*wanted, "CPUExecutionProvider"]
    built = {}
    for p in providers:
        try:
            built[p] = sessions(p)
        except Exception as exc:  # a provider listed but unable to start (missing libraries)
            print(f"{p}: could not start: {str(exc).splitlines()[0]}")
    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for b in batches:
        x = rng.standard_normal((b, N_FEATURES)).astype(np.float32)
        ref = run_ensemble(built["CPUExecutionProvider"], x)
        cells = {}
        for p, members in built.items():
            diff = float(np.abs(run_ensemble(members, x) - ref).max())
            cells[p] = (median_ms(members, x, args.seconds), diff)
        rows.append((b, cells))
    names = list(built)
    print()
    print(
        "| batch | "
        + " | ".join(f"{n.replace('ExecutionProvider', '')} ms (rows/s)" for n in names)
        + " | CPU/GPU speed-up | max abs diff vs CPU |"
    )
    print("|---:|" + "---:|" * len(names) + "---:|---:|")
    for b, cells in rows:
        cols = [f"{cells[n][0]:.3f} ({b / cells[n][0] * 1000:,.0f})" for n in names]
        gpu = next((n for n in names if n != "CPUExecutionProvider"), None)
        speed = f"{cells['CPUExecutionProvider'][0] / cells[gpu][0]:.1f}x" if gpu else "n/a"
        diff = max(cells[n][1] for n in names)
        print(f"| {b} | " + " | ".join(cols) + f" | {speed} | {diff:.1e} |")


if __name__ == "__main__":
    main()
