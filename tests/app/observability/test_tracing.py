"""Request traces: one request's spans, their parents, the shared batch span and its links,
the caller's trace continued, sampling, gRPC metadata (the SDK's in-memory exporter); the
console's ring, fed without spans where nothing takes them."""

from __future__ import annotations

import asyncio
import http.server
import math
import threading
from typing import ClassVar

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.observability.tracing import Tracing, otlp_endpoint
from load_tests import samples
from tests.app.conftest import grpc_image_request, serving, serving_grpc
from tests.conftest import MODELS, model_folder

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
VERSION = model_folder("fashion-cnn").name


class Recorded:
    """The spans the app's tracer ends, kept by the SDK's in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()

    def install(self, app: FastAPI) -> None:
        tracing = app.tracing  # type: ignore[attr-defined]
        assert tracing is not None, "tracing on: the lifespan makes the tracer"
        tracing.export_to(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def requests(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]

    def children(self, parent: ReadableSpan) -> dict[str, ReadableSpan]:
        assert parent.context is not None
        return {s.name: s for s in self.spans()
                if s.parent is not None and s.parent.span_id == parent.context.span_id}


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


async def test_a_request_has_its_phases_as_children_and_its_batch_linked(recorded: Recorded) -> None:
    apps: list[FastAPI] = []
    body = samples.v2_json(1, MODELS)
    async with serving(apps.append, tracing=True) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/fashion-cnn/infer", content=body,
                                   headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
    assert answer.status_code == 200
    assert answer.headers["x-trace-id"] == TRACE  # the caller's trace, continued
    [request] = recorded.requests()
    assert request.name == "POST /v2/models/{name}/infer"
    assert request.context is not None
    assert format(request.context.trace_id, "032x") == TRACE
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == CALLER_SPAN
    attributes = dict(request.attributes or {})
    assert (attributes["model"], attributes["version"], attributes["http.response.status_code"]) == (
        "fashion-cnn", VERSION, 200)
    assert attributes["request_id"] == answer.headers["x-request-id"]
    assert attributes["send_ms"] >= 0
    children = recorded.children(request)
    assert set(children) == {"read body", "decode", "queue", "compute", "encode", "batch"}
    assert dict(children["read body"].attributes or {})["bytes"] == len(body)
    order = [children[n] for n in ("read body", "decode", "queue", "compute", "encode")]
    for before, after in zip(order, order[1:], strict=False):  # one after another, inside the request
        assert before.end_time is not None
        assert after.start_time is not None
        assert before.end_time <= after.start_time
    assert request.start_time is not None
    assert request.end_time is not None
    assert request.start_time <= order[0].start_time <= order[-1].end_time <= request.end_time  # type: ignore[operator]
    batch, compute = children["batch"], children["compute"]
    assert dict(batch.attributes or {}) | {"batch.collate_ms": 0} == {
        "model": "fashion-cnn", "version": VERSION, "batch.id": dict(compute.attributes or {})["batch.id"],
        "batch.rows": 1, "batch.requests": 1, "batch.trigger": "idle", "batch.collate_ms": 0}
    assert [link.context.span_id for link in compute.links] == [batch.context.span_id]  # type: ignore[union-attr]


async def test_requests_in_one_batch_share_its_span(recorded: Recorded) -> None:
    apps: list[FastAPI] = []
    body = samples.v2_json(1, MODELS)
    async with serving(apps.append, tracing=True, max_queue_delay_ms=30, idle_dispatch=False) as client:
        recorded.install(apps[0])
        answers = await asyncio.gather(*(client.post("/v2/models/fashion-cnn/infer", content=body) for _ in range(8)))
    assert all(a.status_code == 200 for a in answers)
    requests = recorded.requests()
    assert len(requests) == 8
    assert len({r.context.trace_id for r in requests}) == 8  # type: ignore[union-attr]  # each its own trace
    batches = {s.context.span_id: s for s in recorded.spans() if s.name == "batch"}  # type: ignore[union-attr]
    computes = [s for s in recorded.spans() if s.name == "compute"]
    linked = [c.links[0].context.span_id for c in computes]
    assert set(linked) == set(batches)  # every compute links to a batch span that exists
    assert len(batches) < 8  # some rode together, and share one span
    for span_id, batch in batches.items():
        riders = linked.count(span_id)
        assert dict(batch.attributes or {})["batch.requests"] == riders
        assert dict(batch.attributes or {})["batch.rows"] == riders


async def test_a_split_request_links_every_batch_it_took(recorded: Recorded) -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, tracing=True) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(200, MODELS))
    assert answer.status_code == 200
    [compute] = [s for s in recorded.spans() if s.name == "compute"]
    assert dict(compute.attributes or {})["batches"] == 2
    assert len({link.context.span_id for link in compute.links}) == 2


async def test_errors_and_unsampled_requests() -> None:
    apps: list[FastAPI] = []
    recorded = Recorded()
    async with serving(apps.append, tracing=True, trace_sample=0.0) as client:
        recorded.install(apps[0])
        unsampled = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS))
        # a caller's sampled trace is continued whatever the ratio (parent-based)
        continued = await client.get("/v2/models/nope", headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
    assert unsampled.status_code == 200
    assert "x-trace-id" not in unsampled.headers  # nothing recorded: no trace to look up
    [request] = recorded.requests()
    assert format(request.context.trace_id, "032x") == TRACE  # type: ignore[union-attr]
    assert dict(request.attributes or {})["http.response.status_code"] == 404
    assert request.name == "GET /v2/models/{name}"
    assert continued.status_code == 404


async def test_tracing_is_off_by_default() -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append) as client:
        answer = await client.get("/v2/health/live")
    assert apps[0].tracing is None  # type: ignore[attr-defined]
    assert "x-trace-id" not in answer.headers


async def test_the_console_ring_keeps_the_slowest_with_their_spans() -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, tracing=True) as client:
        tracing: Tracing = apps[0].tracing  # type: ignore[attr-defined]
        # Nothing takes OpenTelemetry's spans here: the console's ring is fed without them.
        ended = InMemorySpanExporter()  # straight on the provider, as export_to is not asked
        tracing.provider.add_span_processor(SimpleSpanProcessor(ended))
        answers = [await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(n, MODELS),
                                     headers=headers)
                   for n, headers in ((1, {}), (64, {"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}), (1, {}))]
        await client.get("/v2/health/ready")  # no model named: not kept
        records = tracing.recent.slowest(10)
    assert not tracing.exporting
    assert ended.get_finished_spans() == ()
    assert len(records) == 3
    assert records[0].duration_ms >= records[1].duration_ms >= records[2].duration_ms
    assert {r.trace_id for r in records} == {a.headers["x-trace-id"] for a in answers}
    assert len({r.trace_id for r in records}) == 3
    continued = next(r for r in records if r.trace_id == TRACE)  # the 64 images, in the caller's trace
    assert continued.name == "POST /v2/models/{name}/infer"
    assert (continued.attributes["model"], continued.attributes["version"], continued.attributes["status"]) == (
        "fashion-cnn", VERSION, "200")
    spans = {s["name"]: s for s in continued.spans}
    assert [s["name"] for s in continued.spans][:2] == ["read body", "decode"]
    assert {"queue", "compute", "encode", "batch"} <= set(spans)
    assert spans["batch"]["attributes"]["batch.id"] == spans["compute"]["attributes"]["batch.id"]
    assert spans["batch"]["attributes"]["batch.rows"] == 64
    assert spans["read body"]["attributes"]["bytes"] == len(samples.v2_json(64, MODELS))
    # Order, not a time bound: the spans come sorted by start, the first from the request's own
    # start, none before it (each is made from moments the request recorded while it ran).
    starts = [s["start_ms"] for s in continued.spans]
    assert starts == sorted(starts)
    assert starts[0] == 0.0
    assert all(s["duration_ms"] >= 0 for s in continued.spans)
    # And none ends after the request (an order, compared in the record's own float ms, so
    # equal moments may differ in the last bit; no bound on how long anything took).
    ends = [s["start_ms"] + s["duration_ms"] for s in continued.spans]
    assert all(end <= continued.duration_ms or math.isclose(end, continued.duration_ms) for end in ends)


async def test_exported_spans_and_the_console_tell_the_same_request(recorded: Recorded) -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, tracing=True) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS))
        [record] = apps[0].tracing.recent.slowest(10)  # type: ignore[attr-defined]
    [request] = recorded.requests()
    assert format(request.context.trace_id, "032x") == record.trace_id == answer.headers["x-trace-id"]  # type: ignore[union-attr]
    assert request.start_time is not None
    assert request.end_time is not None
    assert record.duration_ms == pytest.approx((request.end_time - request.start_time) / 1e6, abs=0.01)
    children = recorded.children(request)
    assert {s["name"] for s in record.spans} == set(children)
    for shown in record.spans:
        span = children[shown["name"]]
        assert span.start_time is not None
        assert span.end_time is not None
        assert shown["duration_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6, abs=0.01)
        assert shown["attributes"] == dict(span.attributes or {})
    assert record.attributes == dict(request.attributes or {})


async def test_grpc_calls_continue_the_callers_trace_from_metadata(recorded: Recorded) -> None:
    async with serving_grpc(tracing=True) as (_, stub, app):
        recorded.install(app)
        call = stub.ModelInfer(grpc_image_request(), metadata=(("traceparent", f"00-{TRACE}-{CALLER_SPAN}-01"),))
        await call
        initial = dict(await call.initial_metadata())
    assert initial["x-trace-id"] == TRACE
    [span] = recorded.requests()
    assert span.name == "grpc ModelInfer"
    assert format(span.context.trace_id, "032x") == TRACE  # type: ignore[union-attr]
    assert dict(span.attributes or {})["model"] == "fashion-cnn"
    assert {"decode", "queue", "compute", "encode", "batch"} <= set(recorded.children(span))


async def test_opentelemetrys_own_sampler_variable_decides_where_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    apps: list[FastAPI] = []
    recorded = Recorded()
    async with serving(apps.append, tracing=True, trace_sample=1.0) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS))
    assert answer.status_code == 200
    assert recorded.spans() == []


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector's one route: what it was sent."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


async def test_spans_go_to_the_otlp_endpoint_a_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    apps: list[FastAPI] = []
    try:
        async with serving(apps.append) as client:  # no --tracing: the endpoint turns traces on
            answer = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS))
        # the lifespan's end sent what was queued
    finally:
        collector.shutdown()
    assert answer.status_code == 200
    assert Collector.received, "nothing reached the collector"
    path, kind, body = Collector.received[0]
    assert (path, kind) == ("/v1/traces", "application/x-protobuf")
    sent = ExportTraceServiceRequest.FromString(body)
    names = {span.name for r in sent.resource_spans for s in r.scope_spans for span in s.spans}
    assert {"POST /v2/models/{name}/infer", "queue", "compute", "batch"} <= names
    resource = {a.key: a.value.string_value for a in sent.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "ortserve"


def test_the_service_is_named_ortserve_unless_opentelemetrys_variable_says(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Tracing().provider.resource.attributes["service.name"] == "ortserve"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fashion-frontline")
    assert Tracing().provider.resource.attributes["service.name"] == "fashion-frontline"


def test_sampling_follows_the_callers_flag_else_the_ratio() -> None:
    tracing = Tracing(sample=0.5)
    draws = iter([0.2, 0.7])
    tracing._draw = lambda: next(draws)
    assert tracing.sampled(None) is True  # 0.2 < 0.5
    assert tracing.sampled(None) is False  # 0.7
    assert tracing.sampled(f"00-{TRACE}-{CALLER_SPAN}-01".encode()) is True  # the caller's flag, no draw
    assert tracing.sampled(f"00-{TRACE}-{CALLER_SPAN}-00".encode()) is False
    assert Tracing(sample=0.0).sampled(b"00-garbage") is False  # malformed: as none, then the ratio
    assert Tracing(sample=1.0).sampled(None) is True


async def test_a_caller_that_does_not_sample_is_not_traced() -> None:
    apps: list[FastAPI] = []
    recorded = Recorded()
    async with serving(apps.append, tracing=True) as client:
        recorded.install(apps[0])
        answer = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS),
                                   headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-00"})
    assert answer.status_code == 200
    assert recorded.spans() == []


def test_the_otlp_endpoint_from_the_setting_or_opentelemetrys_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert otlp_endpoint(None) is None
    assert otlp_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/")
    assert otlp_endpoint(None) == "http://base:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom")
    assert otlp_endpoint(None) == "http://traces:4318/custom"  # the signal's own: as it is
    assert otlp_endpoint("http://set:4318/v1/traces") == "http://set:4318/v1/traces"  # the setting first
