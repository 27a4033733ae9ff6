"""What the V2 metadata, Triton configuration and statistics calls say about served
models, whichever transport asks (app/http's routes, app/grpc's service): built once here
from the repository, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from app.protocol import triton
from app.repository import ModelRepository


def metadata(repository: ModelRepository, name: str, version: str | None = None) -> dict[str, Any]:
    """The V2 model metadata of the newest served version, listing every served version (or of
    `version`, listing that one)."""
    model = repository.get(name, version)
    versions = [model.version] if version else repository.versions_of(name)
    providers = model.session.providers if model.session is not None else []  # none: an ensemble
    return triton.model_metadata(model.manifest, versions, model.variant, providers)


def config(repository: ModelRepository, name: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration of the newest served version (or `version`)."""
    model = repository.get(name, version)
    if model.manifest.ensemble is not None:
        return triton.ensemble_config(model.manifest, version_policy=repository.policy_of(name).as_triton(),
                                      told_by=model.told_by, ignored=model.ignored, cached=model.cache is not None)
    policy = model.policy
    return triton.model_config(model.manifest, variant=model.variant, device=model.device,
                               max_batch_size=policy.max_batch_size, max_queue_delay_s=policy.max_queue_delay_s,
                               concurrent_batches=policy.concurrent_batches * repository.settings.worker_processes,
                               version_policy=repository.policy_of(name).as_triton(),
                               told_by=model.told_by, ignored=model.ignored, verified=model.verified,
                               cached=model.cache is not None)


def statistics(repository: ModelRepository, name: str = "", version: str = "") -> list[dict[str, Any]]:
    """Triton's statistics: of every served version of every model (no name), of one model's
    served versions, or of one version; an unknown or unserved model raises as `get` does.
    This worker's figures (app/http/services.py adds the other workers')."""
    if not name:
        return [m.stats.as_triton(m.name, m.version) for m in repository.all()]
    if version:
        model = repository.get(name, version)
        return [model.stats.as_triton(model.name, model.version)]
    repository.get(name)  # not found / not served
    return [stats.as_triton(name, v) for v, stats in repository.stats_of(name)]
