"""SIGTERM with gRPC calls running: both transports turn unready, running calls finish, new ones get
UNAVAILABLE, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from testing.members import numpy_member
from testing.repositories import write_version
from testing.server_process import ServerProcess, wait_for

pytestmark = pytest.mark.slow

N_FEATURES = 16
DRAINING = "The server is shutting down; send the request to another replica."


@dataclass
class Outcome:
    started: float
    code: grpc.StatusCode
    details: str
    probabilities: np.ndarray | None


def infer_request(x: np.ndarray) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="heavy")
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.astype(np.float32).tobytes())
    return msg


def test_sigterm_drains_grpc_with_http(tmp_path: Path) -> None:
    # Tens of milliseconds a batch: the load threads' calls are in flight much of the time.
    members = write_version(
        tmp_path / "repo", "heavy", 1, n_features=N_FEATURES, hidden=[1024, 1024], members=5
    )
    x = np.random.default_rng(0).standard_normal((512, N_FEATURES)).astype(np.float32)
    want = np.mean([numpy_member(w, x, "classification") for w in members], axis=0)
    env = {"ENSEMBLE_WARMUP_RUNS": "0", "ENSEMBLE_DRAIN_TIMEOUT_S": "15", "ENSEMBLE_INTRA_OP_THREADS": "1"}
    server = ServerProcess(tmp_path / "repo", env, tmp_path / "server.log")
    outcomes: list[Outcome] = []
    signalled = threading.Event()

    def load() -> None:
        """Back-to-back calls until one is refused after the signal (bounded in count and time)."""
        end = time.monotonic() + 30
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(500):
                t0 = time.monotonic()
                try:
                    answer = stub.ModelInfer(infer_request(x), timeout=20)
                    probs = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(len(x), -1)
                    outcomes.append(Outcome(t0, grpc.StatusCode.OK, "", probs))
                except grpc.RpcError as exc:
                    outcomes.append(Outcome(t0, exc.code(), exc.details() or "", None))
                if time.monotonic() > end or (signalled.is_set() and outcomes[-1].code != grpc.StatusCode.OK):
                    break

    try:
        server.wait_live()
        server.wait_loaded()
        channel = grpc.insecure_channel(server.grpc_target)
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the load threads are busy
        t_signal = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        signalled.set()
        # Readiness turns false on both transports at once; liveness still answers.
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        check = health_pb2.HealthCheckRequest()
        wait_for(lambda: health.Check(check, timeout=5).status == not_serving, "gRPC health NOT_SERVING", 5)
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert server.client.get("/v2/health/ready").status_code == 503
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request(x[:1]), timeout=5)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, DRAINING)
        channel.close()
        for t in threads:
            t.join(30)
        assert server.proc.wait(30) == 0
    finally:
        if server.proc.poll() is None:
            server.stop()
    log = (tmp_path / "server.log").read_text()
    answered = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    refused = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert answered and refused, log[-2000:]
    for o in answered:
        np.testing.assert_allclose(o.probabilities, want, rtol=1e-4, atol=1e-5)
    # Every call sent before the signal got its answer; what failed was refused as draining, after it.
    for o in refused:
        assert o.started >= t_signal - 0.05, (o, log[-2000:])
        assert o.code == grpc.StatusCode.UNAVAILABLE, o
    assert "drained: every accepted request has its answer" in log


def test_an_idle_stream_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """A ModelStreamInfer stream with one answered request, left open: SIGTERM ends it (OK) at once and
    the process exits 0 within ~2 s, not after the whole drain timeout (8 s)."""
    import queue

    write_version(tmp_path / "repo", "iris", 1, members=2, seed=1)
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_DRAIN_TIMEOUT_S": "8"}
    server = ServerProcess(tmp_path / "repo", env, tmp_path / "server.log")
    outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> object:
        while (msg := outbox.get(timeout=30)) is not None:
            yield msg

    try:
        server.wait_live()
        server.wait_loaded()
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = stub.ModelStreamInfer(requests(), timeout=30)
            msg = pb.ModelInferRequest(model_name="iris")
            msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
            msg.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
            outbox.put(msg)
            first = next(answers)
            assert first.error_message == "" and first.infer_response.model_name == "iris"
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(10) == 0, server.log_tail()
            took = time.monotonic() - start
            assert list(answers) == []  # the stream ended cleanly (OK), with no more answers
            outbox.put(None)
        assert took < 3.0, f"exit took {took:.1f}s"
    finally:
        outbox.put(None)
        server.stop()
