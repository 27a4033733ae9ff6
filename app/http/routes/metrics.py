"""Prometheus metrics of the service, in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.http.services import services
from app.observability import triton_metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            description="Every metric of the service in Prometheus' text exposition format: requests, "
                        "latency histograms, batch sizes, queue depth and time, model states, process figures; "
                        "with several worker processes, all of them (process figures labelled by worker). "
                        "Triton's per-model inference counters (`nv_inference_*`) as well, from the figures "
                        "the statistics calls answer.",
            responses={200: {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus_metrics(request: Request) -> Response:
    found = services(request)
    workers = found.worker_metrics  # several worker processes: all of them
    body = workers.exposition() if workers is not None else generate_latest(found.metrics.registry)
    return Response(body + triton_metrics.exposition(found.statistics()), media_type=CONTENT_TYPE_LATEST)
