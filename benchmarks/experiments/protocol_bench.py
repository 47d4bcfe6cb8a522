"""Cost of the V2 wire format in process: parse a tritonclient request, encode a response, JSON vs binary.

Shaped like the default model (64 FP32 features in; probabilities and spread [B, 10] FP32 and label [B]
INT64 out). Prints one markdown table of median microseconds per call. Run:
``python -m benchmarks protocol [--batch 1 64 1024]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from server.protocol.v2 import encode_infer_response, parse_infer_request

N_FEATURES, N_CLASSES = 64, 10


def median_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 1024])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| batch | format | parse request (us) | encode response (us) | request bytes | response bytes |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in args.batch:
        x = rng.normal(size=(batch, N_FEATURES)).astype(np.float32)
        probs = rng.random((batch, N_CLASSES)).astype(np.float32)
        outputs = [
            ("probabilities", probs, "FP32"),
            ("label", probs.argmax(axis=1).astype(np.int64), "INT64"),
            ("spread", probs / 10, "FP32"),
        ]
        for binary in (False, True):
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            body, header_length = _get_inference_request([tensor], "", None, 0, False, False, 0, None, None)
            parse = median_us(lambda b=body, h=header_length: parse_infer_request(b, h))
            response, _ = encode_infer_response("digits", 1, outputs, binary=binary)
            encode = median_us(lambda b=binary, o=outputs: encode_infer_response("digits", 1, o, binary=b))
            name = "binary" if binary else "JSON"
            print(f"| {batch} | {name} | {parse:.1f} | {encode:.1f} | {len(body)} | {len(response)} |")


if __name__ == "__main__":
    main()
