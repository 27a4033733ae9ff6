"""Request traces: a trace per request, with where its time went and the batch it rode in,
in the console and, where something takes them, as OpenTelemetry spans.

A request's trace starts as it arrives, in the W3C `traceparent` trace a client sent (HTTP
header or gRPC metadata). Its phases are made as it ends, from the moments its
`RequestTiming` recorded on the way (app/batching/request.py): reading the body, decoding
it, waiting in the queue, the batch's compute, and encoding the answer. So serving the
request adds only a few clock reads; what is made of them is what tracing costs.

The phases go to `RecentTraces`, the bounded ring the console's slow-request view reads,
as they are: no span is made for it. OpenTelemetry's spans, six or so per request at tens
of microseconds each, are made only where something takes them: an OTLP collector
(`otlp_endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`; the `otlp` extra), or a processor given
to `Tracing.export_to` (docs/benchmarks.md, "Traces without the SDK's spans"). There, the
request's span is a child of the caller's and its phases are its children.

The batch is one span, shared: made by the first traced request of the batch to end, as a
child of that request's span (so a sampled request's trace always holds it), with its
rows, requests and why it ran (idle, full, due); every other traced request's compute span
links to it. Where a request is split over batches its compute span links to each.

Sampling: `trace_sample` of requests, drawn per request before anything else runs, so an
unsampled request costs one random number; a caller's `traceparent` flag decides for its
request instead (parent-based, as OpenTelemetry's default sampler). Where
`OTEL_TRACES_SAMPLER` (and `OTEL_TRACES_SAMPLER_ARG`) name a sampler, the SDK's decides for
every request (spans are made then). `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
name the service.
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
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.batching.request import BatchMoments, RequestTiming
from app.observability.access import AccessLog, trace_id

logger = logging.getLogger(__name__)

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


Phase = tuple[str, float, float, dict[str, Any]]
"""A part of a request's time as its trace shows it: (name, start, end as time.monotonic(),
attributes)."""


@dataclass(slots=True)
class Traced:
    """A request being traced: its trace id, and its OpenTelemetry span where spans are made."""

    trace_id: int
    span: Span | None = None


class RecentTraces:
    """The last `keep` traced requests that named a model, in memory (the console's view of
    slow requests): each as the moments it recorded, kept as they are; what the console shows
    is built only when asked. Written on the event loop, one request at a time: no lock."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        # (trace id, route, arrived_ns, arrived, ended, attributes, phases) per request
        self._records: deque[tuple[int, str, int, float, float, dict[str, Any], list[Phase]]] = deque(maxlen=keep)

    def add(self, trace_id: int, route: str, timing: RequestTiming, ended: float, attributes: dict[str, Any],
            phases: list[Phase]) -> None:
        self._records.append((trace_id, route, timing.arrived_ns, timing.arrived, ended, attributes, phases))

    def slowest(self, count: int) -> list[TraceRecord]:
        chosen = sorted(self._records, key=lambda r: r[4] - r[3], reverse=True)[:count]
        return [_record(*entry) for entry in chosen]


def _record(trace_id: int, route: str, arrived_ns: int, arrived: float, ended: float, attributes: dict[str, Any],
            phases: list[Phase]) -> TraceRecord:
    return TraceRecord(
        trace_id=format(trace_id, "032x"), name=route, duration_ms=(ended - arrived) * 1000,
        ended_at=(arrived_ns + (ended - arrived) * 1e9) / 1e9, attributes=dict(attributes),
        spans=[{"name": name, "start_ms": (start - arrived) * 1000, "duration_ms": (end - start) * 1000,
                "attributes": dict(values)}
               for name, start, end, values in sorted(phases, key=lambda p: p[1])])


class Tracing:
    """The service's tracer: requests' traces started and finished, batches' spans shared.

    Every traced request that names a model goes to `recent` (the console), made from the
    moments it recorded: no OpenTelemetry span for that, which costs the event loop tens of
    microseconds each (six per request; docs/benchmarks.md, "Traces without the SDK's
    spans"). OpenTelemetry's spans are made only where something takes them, `exporting`: an
    OTLP endpoint, a processor given to `export_to`, or OTEL_TRACES_SAMPLER (the SDK decides
    which requests are traced then)."""

    def __init__(self, sample: float = 1.0, endpoint: str | None = None, keep: int = 256) -> None:
        self.recent = RecentTraces(keep)
        # The ratio is applied here, per request, before anything of OpenTelemetry's runs (an
        # unsampled request costs one random number); the SDK then records what it is given,
        # or follows the caller's flag. Where OTEL_TRACES_SAMPLER names a sampler, the SDK's
        # decides for every request instead.
        self.ratio = sample
        self.sdk_samples = bool(os.environ.get("OTEL_TRACES_SAMPLER"))
        self.exporting = self.sdk_samples
        self._draw = random.random
        self._new_trace_id = lambda: random.getrandbits(128) or 1  # as the SDK's own ids (0 is invalid)
        sampler = None if self.sdk_samples else ParentBased(ALWAYS_ON)
        self.provider = TracerProvider(sampler=sampler, resource=_resource())
        if endpoint is not None:
            self.export_to(BatchSpanProcessor(_otlp_exporter(endpoint)))
            logger.info("traces go to %s over OTLP/HTTP", endpoint)
        self.tracer = self.provider.get_tracer("ortserve")
        # Batches already traced, by (model, version, batch id): their span where spans are
        # made (for the links of the other requests that rode in them), else None. The first
        # traced request of a batch to end holds it. Bounded: a batch's requests end within moments.
        self._batches: OrderedDict[tuple[str, str, int], SpanContext | None] = OrderedDict()

    def export_to(self, processor: SpanProcessor) -> None:
        """Make OpenTelemetry spans from here on, and hand them to `processor` as they end."""
        self.provider.add_span_processor(processor)
        self.exporting = True

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

    def start(self, name: str, traceparent: bytes | None, tracestate: bytes | None, timing: RequestTiming,
              kind: SpanKind = SpanKind.SERVER) -> Traced | None:
        """A request's trace, in the caller's trace where one was sent (the header's or the
        metadata's bytes, as they came; `tracestate` is read only where spans are made); None
        where the SDK's sampler says not to record it (nothing more is recorded for it)."""
        if not self.exporting:
            caller = trace_id(traceparent)
            traced = Traced(int(caller, 16) if caller is not None else self._new_trace_id())
            timing.trace_id = format(traced.trace_id, "032x")
            return traced
        parent: Context | None = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1"),
                       **({"tracestate": tracestate.decode("latin-1")} if tracestate else {})}
            parent = _PROPAGATOR.extract(carrier)
        span = self.tracer.start_span(name, context=parent, kind=kind, start_time=_ns(timing, timing.arrived))
        context = span.get_span_context()
        timing.trace_id = format(context.trace_id, "032x")
        if not span.is_recording():
            return None
        return Traced(context.trace_id, span)  # type: ignore[arg-type]  # a recording span is the SDK's Span

    def finish(self, traced: Traced, timing: RequestTiming, route: str, status: int | str,
               attributes: dict[str, Any]) -> None:
        """The request's phases from its recorded moments, to the console and, where spans are
        made, as the request span's children."""
        span = traced.span
        model = attributes.get("model")
        if span is None and not model:
            return  # the console keeps requests for a model; nothing else takes this one
        ended = time.monotonic()
        values: dict[str, Any] = {"status": str(status), "route": route}
        if timing.response_started:  # handing the answer to the connection: an attribute, not a span
            values["send_ms"] = (ended - timing.response_started) * 1000
        values.update((k, v) for k, v in attributes.items() if v is not None)
        phases = _phases(timing, ended)
        # The batches this request is the first traced one of to end: their span is its child.
        first = [batch for batch in timing.batch_spans if self._first_of(timing, batch)]
        if span is not None:
            self._export(span, timing, route, status, values, phases, first, ended)
        if model:
            phases += [("batch", batch.started, batch.computed, _batch_attributes(timing, batch)) for batch in first]
            self.recent.add(traced.trace_id, route, timing, ended, values, phases)

    def _first_of(self, timing: RequestTiming, batch: BatchMoments) -> bool:
        key = _batch_key(timing, batch)
        if key in self._batches:
            return False
        self._batches[key] = None  # its span's context once made (`_export`)
        while len(self._batches) > 4096:
            self._batches.popitem(last=False)
        return True

    def _export(self, span: Span, timing: RequestTiming, route: str, status: int | str, values: dict[str, Any],
                phases: list[Phase], first: list[BatchMoments], ended: float) -> None:
        """The request's span, its phases and the batches it was first of as its children, and
        its compute phase linked to every batch it rode in."""
        span.update_name(route)
        context = trace.set_span_in_context(span)
        for batch in first:
            made = self.tracer.start_span("batch", context=context, start_time=_ns(timing, batch.started),
                                          kind=SpanKind.INTERNAL, attributes=_batch_attributes(timing, batch))
            made.end(_ns(timing, batch.computed))
            self._batches[_batch_key(timing, batch)] = made.get_span_context()
        for name, start, end, attributes in phases:
            links = None
            if name == "compute":
                found = (self._batches.get(_batch_key(timing, b)) for b in timing.batch_spans)
                links = [Link(c) for c in found if c is not None]
            child = self.tracer.start_span(name, context=context, start_time=_ns(timing, start),
                                           attributes=attributes or None, links=links)
            child.end(_ns(timing, end))
        span.set_attributes(values)
        if isinstance(status, int) and status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        span.end(_ns(timing, ended))


def _phases(timing: RequestTiming, ended: float) -> list[Phase]:
    """Where the request's time went, from the moments it recorded (a GET's body is never
    read; a request refused before the model has no queue or compute)."""
    body_done = timing.body_done or timing.arrived
    queued = timing.queued or body_done
    phases: list[Phase] = []
    if timing.body_done:
        phases.append(("read body", timing.arrived, body_done, {"bytes": timing.bytes_in}))
    if timing.queued:
        phases.append(("decode", body_done, max(body_done, queued), {}))
    if timing.batch_spans:
        first, last = timing.batch_spans[0], timing.batch_spans[-1]
        queue_attributes: dict[str, Any] = {"queue_ms": timing.queue_s * 1000}
        if timing.priority:
            queue_attributes["priority"] = timing.priority
        if timing.sequence_id is not None:
            queue_attributes["sequence_id"] = timing.sequence_id
        phases.append(("queue", queued, max(queued, first.collated), queue_attributes))
        phases.append(("compute", first.collated, max(first.collated, last.computed), {
            "batch.id": timing.batch_id, "batch.rows": timing.batch_rows, "batch.trigger": timing.trigger,
            "batches": timing.batches}))
    if timing.answered:
        encoded = timing.response_started or ended
        phases.append(("encode", timing.answered, max(timing.answered, encoded), {"bytes": timing.bytes_out}))
    return phases


def _batch_key(timing: RequestTiming, batch: BatchMoments) -> tuple[str, str, int]:
    """A batch among every model's: batch ids count per model version."""
    return timing.model, timing.version, batch.batch_id


def _batch_attributes(timing: RequestTiming, batch: BatchMoments) -> dict[str, Any]:
    return {"model": timing.model, "version": timing.version, "batch.id": batch.batch_id, "batch.rows": batch.rows,
            "batch.requests": batch.requests, "batch.trigger": batch.trigger,
            "batch.collate_ms": (batch.collated - batch.started) * 1000}


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
