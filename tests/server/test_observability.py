"""server.observability on its own: the request log's lines and sampling, the spans (in the SDK's in-memory
exporter), W3C traceparent propagation, and the no-observer path when nothing is asked for."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from server import observability as obs
from server.observability import BatchTiming, Observer, RequestContext, RequestLog, Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Lines:
    """A request log sink: every write, and the JSON lines in them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def entries(self) -> list[dict]:
        return [json.loads(line) for w in self.writes for line in w.splitlines()]


def tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def batch_of(start: float, queue_s: float, compute_s: float, rows: int = 8, requests: int = 3) -> BatchTiming:
    return BatchTiming(start, start + queue_s, start + queue_s + compute_s, rows, requests)


def finish(observer: Observer, context: RequestContext | None, **kw: object) -> None:
    args: dict = {
        "protocol": "v2", "model": "iris", "version": "1", "request_id": None, "status": 200, "rows": 2,
        "start": time.perf_counter() - 0.010, "batch": None,
    }  # fmt: skip
    args.update(kw)
    observer.finish(context, **args)


# ---------------------------------------------------------------- request log
def test_a_full_log_line_has_every_field_and_no_payload() -> None:
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), None)
    call = RequestContext(client="127.0.0.1:5000")
    start = time.perf_counter() - 0.010
    finish(observer, call, request_id="req-7", rows=3, start=start, batch=batch_of(start, 0.002, 0.005))
    (entry,) = sink.entries
    assert set(entry) == {"time", "request_id", "model", "version", "protocol", "status", "rows",
                          "queue_ms", "compute_ms", "total_ms", "client"}  # fmt: skip
    assert entry["request_id"] == "req-7" and call.request_id == "req-7" and call.echo_id == "req-7"
    assert [entry[k] for k in ("model", "version", "protocol", "status", "rows")] == [
        "iris",
        "1",
        "v2",
        200,
        3,
    ]
    assert entry["queue_ms"] == pytest.approx(2.0, abs=1e-6)
    assert entry["compute_ms"] == pytest.approx(5.0, abs=1e-6)
    assert 10.0 <= entry["total_ms"] < 1000
    assert entry["client"] == "127.0.0.1:5000"
    # When the answer was ready, in UTC with milliseconds.
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-01T00:00:00.000Z")
    arrived = time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(arrived - time.time()) < 5


def test_the_request_id_is_the_v2_id_then_the_header_then_generated() -> None:
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), None)
    header_only = RequestContext(header_id="from-ingress")
    finish(observer, header_only)
    assert header_only.request_id == "from-ingress" and header_only.echo_id == "from-ingress"
    both = RequestContext(header_id="from-ingress")
    finish(observer, both, request_id="from-body")
    # The client's header is echoed as sent; the log keeps both ids.
    assert both.request_id == "from-body" and both.echo_id == "from-ingress"
    generated = [RequestContext() for _ in range(50)]
    for call in generated:
        finish(observer, call)
    ids = {c.request_id for c in generated}
    assert len(ids) == 50 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # type: ignore[arg-type]
    first, second = sink.entries[:2]
    assert first["request_id"] == "from-ingress" and "x_request_id" not in first
    assert second["request_id"] == "from-body" and second["x_request_id"] == "from-ingress"


def test_generated_ids_differ_across_processes() -> None:
    # A worker is a separate process: ids must not come from a counter or a seed they share.
    code = "from server.observability import new_request_id; print(new_request_id())"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
           for _ in range(2)}  # fmt: skip
    assert len(ids) == 2


def test_failures_carry_the_error_and_no_batch_times() -> None:
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), None)
    finish(observer, RequestContext(), model="nope", version=None, status=404, rows=None,
           error="Model 'nope' does not exist.")  # fmt: skip
    # A request that timed out in the queue: the batcher never filled its timing.
    finish(observer, RequestContext(), status=504, batch=BatchTiming(), error="timed out")
    missing, late = sink.entries
    assert missing["status"] == 404 and missing["error"] == "Model 'nope' does not exist."
    assert missing["queue_ms"] is None and missing["compute_ms"] is None and missing["rows"] is None
    assert late["status"] == 504 and late["queue_ms"] is None and late["rows"] == 2


def test_client_ids_are_cut_and_escaped() -> None:
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), None)
    call = RequestContext(header_id='x"\n' + "y" * 1000)
    finish(observer, call)
    (entry,) = sink.entries
    assert entry["request_id"] == ('x"\n' + "y" * 1000)[: obs.MAX_ID_CHARS]
    assert len(sink.writes) == 1 and sink.writes[0].count(b"\n") == 1  # still one line


def test_sampled_logs_about_the_rate_of_successes_and_every_failure() -> None:
    sink = Lines()
    observer = Observer(RequestLog("sampled", 0.1, write=sink), None)
    for _ in range(2000):
        finish(observer, RequestContext())
    for status in (400, 429, 504):
        finish(observer, RequestContext(), status=status)
    skipped = RequestContext()
    finish(Observer(RequestLog("sampled", 0.0, write=sink), None), skipped)
    assert skipped.request_id is None and skipped.echo_id is None  # recorded nowhere: no id made up
    entries = sink.entries
    ok = [e for e in entries if e["status"] == 200]
    assert 120 <= len(ok) <= 290  # 200 expected; the bounds are over 4 standard deviations wide
    assert [e["status"] for e in entries if e["status"] != 200] == [400, 429, 504]


def test_off_logs_nothing() -> None:
    assert not RequestLog("off").wanted(200) and not RequestLog("off").wanted(500)


def test_lines_of_one_loop_iteration_leave_in_one_write_of_at_most_pipe_buf() -> None:
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), None)

    async def burst() -> None:
        for _ in range(40):  # about 250 bytes each: 10 kB in all
            finish(observer, RequestContext())
        assert sink.writes == []  # not yet: flushed once the loop gets to it
        await asyncio.sleep(0)

    asyncio.run(burst())
    assert len(sink.entries) == 40
    assert 1 < len(sink.writes) < 10 and all(len(w) <= obs.PIPE_BUF for w in sink.writes)
    assert all(w.endswith(b"\n") for w in sink.writes)  # whole lines only


# ---------------------------------------------------------------- tracing
def test_spans_continue_the_clients_trace_with_queue_and_inference_children() -> None:
    t, exporter = tracing()
    sink = Lines()
    observer = Observer(RequestLog("full", write=sink), t)
    call = RequestContext(traceparent=TRACEPARENT, client="10.0.0.5:41234")
    start = time.perf_counter() - 0.010
    finish(observer, call, request_id="abc", rows=3, start=start,
           batch=batch_of(start + 0.001, 0.002, 0.004, rows=8, requests=3))  # fmt: skip
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"infer iris", "queue", "inference"}
    root, queue, inference = spans["infer iris"], spans["queue"], spans["inference"]
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in spans.values())
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.parent.is_remote
    assert queue.parent.span_id == root.context.span_id == inference.parent.span_id
    assert root.kind == SpanKind.SERVER
    assert dict(root.attributes) == {
        "ensemble.model": "iris", "ensemble.model.version": "1", "ensemble.protocol": "v2",
        "ensemble.request_id": "abc", "ensemble.status_code": 200, "ensemble.rows": 3,
        "client.address": "10.0.0.5", "client.port": 41234,
    }  # fmt: skip
    assert dict(inference.attributes) == {"ensemble.batch.size": 8, "ensemble.batch.requests": 3}
    # The children sit inside the request, queue before inference, with the batch's durations.
    assert root.start_time <= queue.start_time < queue.end_time <= inference.start_time
    assert inference.end_time <= root.end_time
    assert (queue.end_time - queue.start_time) / 1e6 == pytest.approx(2.0, abs=0.01)
    assert (inference.end_time - inference.start_time) / 1e6 == pytest.approx(4.0, abs=0.01)
    assert (root.end_time - root.start_time) / 1e6 >= 10.0
    # The request log names the trace.
    assert sink.entries[0]["trace_id"] == TRACE_ID


def test_without_traceparent_a_new_trace_starts() -> None:
    t, exporter = tracing()
    observer = Observer(None, t)
    finish(observer, RequestContext())
    finish(
        observer, RequestContext(traceparent="garbage")
    )  # an invalid header is ignored, as the W3C spec says
    roots = [s for s in exporter.get_finished_spans() if s.name == "infer iris"]
    assert len(roots) == 2 and all(s.parent is None for s in roots)
    assert roots[0].context.trace_id != roots[1].context.trace_id


def test_errors_mark_server_failures_only() -> None:
    t, exporter = tracing()
    observer = Observer(None, t)
    finish(observer, RequestContext(), status=400, error="bad input")
    finish(observer, RequestContext(), status=504, error="timed out")
    finish(observer, RequestContext(), model="whatever-name", status=404, error="no such model")
    bad, late, unknown = exporter.get_finished_spans()
    assert bad.status.status_code == StatusCode.UNSET and bad.attributes["ensemble.error"] == "bad input"
    assert late.status.status_code == StatusCode.ERROR and late.status.description == "timed out"
    assert unknown.name == "infer"  # a client's made-up model name never becomes a span name


def test_an_unsampled_parent_records_nothing() -> None:
    t, exporter = tracing()
    observer = Observer(None, t)
    call = RequestContext(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")  # the caller decided not to sample
    finish(observer, call, batch=batch_of(time.perf_counter(), 0.001, 0.001))
    assert exporter.get_finished_spans() == ()


# ---------------------------------------------------------------- configuration
def test_nothing_asked_means_no_observer_and_no_sdk() -> None:
    assert obs.build_observer("off", 0.01, env={}) is None
    # In a fresh interpreter: building nothing imports no part of OpenTelemetry.
    code = (
        "import sys; from server.observability import build_observer; "
        "assert build_observer('off', 1.0, env={}) is None; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_which_variables_turn_otlp_on() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert obs.otlp_configured(endpoint)
    assert obs.otlp_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not obs.otlp_configured({})
    assert not obs.otlp_configured({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not obs.otlp_configured({**endpoint, "OTEL_TRACES_EXPORTER": "none"})


def test_otlp_tracing_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default = obs.otlp_tracing({})
    monkeypatch.setenv("OTEL_SERVICE_NAME", "iris-east")
    named = obs.otlp_tracing({})
    try:
        assert default.provider.resource.attributes["service.name"] == obs.SERVICE_NAME
        assert named.provider.resource.attributes["service.name"] == "iris-east"
        a, b = (t.provider.resource.attributes["service.instance.id"] for t in (default, named))
        assert a != b
    finally:
        default.shutdown()
        named.shutdown()
    with pytest.raises(ValueError, match="not supported"):
        obs.otlp_tracing({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_json_server_logs(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        obs.setup_logging("info", "json")
        logging.getLogger("server.test").warning("model %s failed", "iris")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("server.test").exception("oops")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["level"] == "WARNING" and first["logger"] == "server.test"
    assert first["message"] == "model iris failed" and first["time"].endswith("Z")
    assert "ValueError: boom" in second["exception"]


def test_grpc_metadata_and_peer() -> None:
    metadata = [("user-agent", "grpc-python"), ("x-request-id", "g-1"), ("traceparent", TRACEPARENT),
                ("x-request-id", "second"), ("tracestate", b"k=v")]  # fmt: skip
    ctx = obs.grpc_context(metadata, "ipv4:127.0.0.1:50051")
    assert (ctx.header_id, ctx.traceparent, ctx.tracestate, ctx.client) == (
        "g-1",
        TRACEPARENT,
        "k=v",
        "127.0.0.1:50051",
    )
    assert obs.grpc_context(None, "ipv6:[::1]:50051").client == "[::1]:50051"
    assert obs.grpc_context((), None).client is None
