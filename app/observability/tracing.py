"""Request traces (OpenTelemetry): a span per request, with where its time went and the
batch it rode in.

A request's span starts as it arrives, as a child of the W3C `traceparent` a client sent
(HTTP header or gRPC metadata). Its children are made as it ends, from the moments its
`RequestTiming` recorded on the way (app/batching/request.py): reading the body, decoding
it, waiting in the queue, the batch's compute, and encoding the answer. Made afterwards,
with their start and end times, so serving the request adds only a few clock reads; making
the spans is what tracing costs (docs/benchmarks.md, "Traces and the access log").

The batch is one span, shared: made by the first traced request of the batch to end, as a
child of that request's span (so a sampled request's trace always holds it), with its
rows, requests and why it ran (idle, full, due); every other traced request's compute span
links to it. Where a request is split over batches its compute span links to each.

Sampling: `trace_sample` of requests, drawn per request before anything of OpenTelemetry's
runs, so an unsampled request costs one random number; a caller's `traceparent` flag
decides for its request instead (parent-based, as OpenTelemetry's default sampler). Where
`OTEL_TRACES_SAMPLER` (and `OTEL_TRACES_SAMPLER_ARG`) name a sampler, the SDK's decides for
every request. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service. Spans go
to an OTLP collector where an endpoint is set (`otlp_endpoint`, or
`OTEL_EXPORTER_OTLP_ENDPOINT`; the `otlp` extra), and always to `RecentTraces`, the
bounded ring the console's slow-request view reads.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.batching.request import BatchMoments, RequestTiming
from app.observability.access import AccessLog, trace_id

logger = logging.getLogger(__name__)

REQUEST_ATTRIBUTE = "ortserve.request"
"""Set on every request's span: how RecentTraces tells a request from its children."""
_PROPAGATOR = TraceContextTextMapPropagator()


def otlp_endpoint(configured: str | None) -> str | None:
    """The URL spans are posted to: the setting's, else OpenTelemetry's standard variables'
    (the traces one as it is; the setting and the general one are a collector's base address,
    which /v1/traces is added to, as the OTLP/HTTP specification says)."""
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = configured or (None if traces else os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if base:
        return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"
    return traces or None


class Observers(Protocol):
    """Who hears of every request, HTTP's and gRPC's: the app, once its lifespan has set them."""

    access_log: AccessLog | None
    tracing: Tracing | None

    @property
    def keep_awake(self) -> Awake | None: ...


class Awake(Protocol):
    """app/keep_awake.py `KeepAwake`: told as each request starts and as it ends (`spins`
    False: counted, never what starts the helper)."""

    def began(self, spins: bool = True) -> None: ...

    def ended(self, spins: bool = True) -> None: ...


@dataclass
class TraceRecord:
    """One traced request as the console shows it: its span and its children's, each as
    (name, start ms from the request's start, duration ms, attributes)."""

    trace_id: str
    name: str
    duration_ms: float
    ended_at: float  # epoch seconds
    attributes: dict[str, Any]
    spans: list[dict[str, Any]] = field(default_factory=list)


class RecentTraces(SpanProcessor):
    """The last `keep` traced requests for a model with their spans, in memory (the console's
    view of slow requests). A request's children end before it (Tracing.finish), so they are
    gathered by their parent and the request's own span closes the entry. Spans end on the
    event loop, one at a time: no lock; what the console shows is built only when asked."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._records: deque[tuple[ReadableSpan, list[ReadableSpan]]] = deque(maxlen=keep)
        self._children: dict[tuple[int, int], list[ReadableSpan]] = {}

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        if REQUEST_ATTRIBUTE not in attributes:
            parent = span.parent
            if parent is not None:
                key = (parent.trace_id, parent.span_id)
                found = self._children.get(key)
                if found is None:
                    if len(self._children) >= 4 * self.keep:  # parents that never end (another's spans)
                        del self._children[next(iter(self._children))]
                    self._children[key] = [span]
                else:
                    found.append(span)
            return
        context = span.context
        children = self._children.pop((context.trace_id, context.span_id), []) if context is not None else []
        if attributes.get("model"):  # slow requests worth a look name a model: not the console's own calls
            self._records.append((span, children))

    def slowest(self, count: int) -> list[TraceRecord]:
        chosen = sorted(self._records, key=lambda r: (r[0].end_time or 0) - (r[0].start_time or 0),
                        reverse=True)[:count]
        return [_record(span, children) for span, children in chosen]


def _record(span: ReadableSpan, children: list[ReadableSpan]) -> TraceRecord:
    start = span.start_time or 0
    context = span.context
    return TraceRecord(
        trace_id=format(context.trace_id if context is not None else 0, "032x"), name=span.name,
        duration_ms=((span.end_time or start) - start) / 1e6, ended_at=(span.end_time or start) / 1e9,
        attributes={k: v for k, v in (span.attributes or {}).items() if k != REQUEST_ATTRIBUTE},
        spans=[{"name": child.name, "start_ms": ((child.start_time or start) - start) / 1e6,
                "duration_ms": ((child.end_time or 0) - (child.start_time or 0)) / 1e6,
                "attributes": dict(child.attributes or {})}
               for child in sorted(children, key=lambda c: c.start_time or 0)])


class Tracing:
    """The service's tracer: requests' spans started and finished, batches' spans shared."""

    def __init__(self, sample: float = 1.0, endpoint: str | None = None, keep: int = 256) -> None:
        self.recent = RecentTraces(keep)
        # The ratio is applied here, per request, before anything of OpenTelemetry's runs (an
        # unsampled request costs one random number); the SDK then records what it is given,
        # or follows the caller's flag. Where OTEL_TRACES_SAMPLER names a sampler, the SDK's
        # decides for every request instead.
        self.ratio = sample
        self.sdk_samples = bool(os.environ.get("OTEL_TRACES_SAMPLER"))
        self._draw = random.random
        sampler = None if self.sdk_samples else ParentBased(ALWAYS_ON)
        self.provider = TracerProvider(sampler=sampler, resource=_resource())
        self.provider.add_span_processor(self.recent)
        if endpoint is not None:
            self.provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
            logger.info("traces go to %s over OTLP/HTTP", endpoint)
        self.tracer = self.provider.get_tracer("ortserve")
        # Batches already traced, by (model, version, batch id): their span, for the links of
        # the other requests that rode in them. Bounded: a batch's requests end within moments.
        self._batches: OrderedDict[tuple[str, str, int], SpanContext] = OrderedDict()

    def shutdown(self) -> None:
        """Spans still queued for the collector are sent first."""
        self.provider.shutdown()

    def sampled(self, traceparent: bytes | None) -> bool:
        """Whether to trace this request: the caller's flag where it sent a valid traceparent
        (parent-based, as OpenTelemetry's default), else `ratio` of requests."""
        if self.sdk_samples:
            return True  # (start's span says)
        if trace_id(traceparent) is not None:
            assert traceparent is not None
            return traceparent[53:55] in _SAMPLED_FLAGS
        return self.ratio >= 1.0 or self._draw() < self.ratio

    def start(self, name: str, traceparent: str | None, tracestate: str | None, timing: RequestTiming,
              kind: SpanKind = SpanKind.SERVER) -> Span | None:
        """A request's span, its parent the caller's trace context where one was sent; None
        where it is not sampled (nothing more is recorded for it)."""
        parent: Context | None = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
            parent = _PROPAGATOR.extract(carrier)
        span = self.tracer.start_span(name, context=parent, kind=kind, start_time=_ns(timing, timing.arrived))
        timing.trace_id = format(span.get_span_context().trace_id, "032x")
        if not span.is_recording():
            return None
        return span  # type: ignore[return-value]  # a recording span is the SDK's Span

    def finish(self, span: Span, timing: RequestTiming, route: str, status: int | str,
               attributes: dict[str, Any]) -> None:
        """The request's children from its recorded moments, then the request's span."""
        span.update_name(route)
        context = trace.set_span_in_context(span)
        ended = time.monotonic()
        body_done = timing.body_done or timing.arrived
        queued = timing.queued or body_done
        if timing.body_done:  # (a GET's body is never read)
            self._child("read body", timing, timing.arrived, body_done, context, {"bytes": timing.bytes_in})
        if timing.queued:
            self._child("decode", timing, body_done, queued, context)
        if timing.batch_spans:
            first, last = timing.batch_spans[0], timing.batch_spans[-1]
            self._child("queue", timing, queued, first.collated, context, {"queue_ms": timing.queue_s * 1000})
            links = [Link(self._batch(span, timing, batch)) for batch in timing.batch_spans]
            self._child("compute", timing, first.collated, last.computed, context,
                        {"batch.id": timing.batch_id, "batch.rows": timing.batch_rows, "batch.trigger": timing.trigger,
                         "batches": timing.batches}, links)
        if timing.answered:
            self._child("encode", timing, timing.answered, timing.response_started or ended, context,
                        {"bytes": timing.bytes_out})
        # After encode, handing the answer to the connection: an attribute, not one more span
        # (each span costs the event loop tens of microseconds).
        values: dict[str, Any] = {REQUEST_ATTRIBUTE: True, "status": str(status), "route": route}
        if timing.response_started:
            values["send_ms"] = (ended - timing.response_started) * 1000
        values.update((k, v) for k, v in attributes.items() if v is not None)
        span.set_attributes(values)
        if isinstance(status, int) and status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        span.end(_ns(timing, ended))

    def _child(self, name: str, timing: RequestTiming, start: float, end: float, context: Context,
               attributes: dict[str, Any] | None = None, links: list[Link] | None = None) -> None:
        child = self.tracer.start_span(name, context=context, start_time=_ns(timing, start), attributes=attributes,
                                       links=links)
        child.end(_ns(timing, max(start, end)))

    def _batch(self, request_span: Span, timing: RequestTiming, batch: BatchMoments) -> SpanContext:
        """The batch's span: made the first time one of its requests ends, found after."""
        key = (timing.model, timing.version, batch.batch_id)
        found = self._batches.get(key)
        if found is not None:
            return found
        span = self.tracer.start_span("batch", context=trace.set_span_in_context(request_span),
                                      start_time=_ns(timing, batch.started), kind=SpanKind.INTERNAL, attributes={
                                          "model": timing.model, "version": timing.version, "batch.id": batch.batch_id,
                                          "batch.rows": batch.rows, "batch.requests": batch.requests,
                                          "batch.trigger": batch.trigger,
                                          "batch.collate_ms": (batch.collated - batch.started) * 1000})
        span.end(_ns(timing, batch.computed))
        self._batches[key] = span.get_span_context()
        while len(self._batches) > 4096:
            self._batches.popitem(last=False)
        return self._batches[key]


def _ns(timing: RequestTiming, moment: float) -> int:
    """A time.monotonic() moment of this request as the epoch nanoseconds spans take."""
    return timing.arrived_ns + int((moment - timing.arrived) * 1e9)


def _resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, where they name the service; else ortserve."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "ortserve"}))
    return resource


_SAMPLED_FLAGS = {f"{flags:02x}".encode() for flags in range(256) if flags & 1}


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as missing:
        raise RuntimeError("traces to an OTLP endpoint need the exporter: pip install 'ortserve[otlp]' "
                           "(opentelemetry-exporter-otlp-proto-http)") from missing
    return OTLPSpanExporter(endpoint=endpoint)
