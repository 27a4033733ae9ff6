"""The OpenAPI document: FastAPI's, plus the request schemas of routes that read raw bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.http.routes import v2
from app.repository import ModelRepository


def add_body_schemas(app: FastAPI, repository: Callable[[], ModelRepository | None]) -> None:
    """Routes read raw bodies (for speed and for binary tensors), so their request schemas
    are added to the OpenAPI components by hand."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        # The repository API's admin token (and the inference endpoints' API keys, where set)
        schema.setdefault("components", {})["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
        _drop_unreachable_validation_errors(schema)
        _served_version_examples(schema, repository())
        components = schema["components"].setdefault("schemas", {})
        for model in v2.OPENAPI_MODELS:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(generated.pop("$defs", {}))
            components[model.__name__] = generated
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_unreachable_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 "Validation Error" on every operation with parameters; here a
    path parameter is any string, and bodies are read and checked by the routes, which
    document their own 422 where they can answer one."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.get("422", {}).get("description") == "Validation Error":
                del responses["422"]
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _served_version_examples(schema: dict[str, Any], repository: ModelRepository | None) -> None:
    """A `version` path parameter's example is a version the example model serves now (when
    the document is first asked for), so that "Try it out" gets an answer, not a 404."""
    if repository is None:
        return
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            parameters = {p["name"]: p for p in operation.get("parameters", [])}
            if "version" not in parameters or "name" not in parameters:
                continue
            versions = repository.versions_of(parameters["name"]["schema"].get("examples", [""])[0])
            if versions:  # the newest: what a request without a version gets
                parameters["version"]["schema"]["examples"] = [versions[-1]]
                parameters["version"]["examples"] = {"served": {"value": versions[-1]}}
