"""The repository's own errors, each with the status a client gets."""

from __future__ import annotations

from app.errors import ServingError


class LoadFailed(ServingError):
    """A load call that left a model (or some of its versions) unavailable."""

    status_code = 400


class RepositoryUnreadable(ServingError):
    """The model folder (or one model's) could not be read: the operator's to fix, logged."""

    status_code = 503
