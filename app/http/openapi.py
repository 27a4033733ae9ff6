"""The OpenAPI document: FastAPI's, plus the request schemas of routes that read raw bodies."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.http.routes import v2


def add_body_schemas(app: FastAPI) -> None:
    """Routes read raw bodies (for speed and for binary tensors), so their request schemas
    are added to the OpenAPI components by hand."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        # The repository API's admin token (and the inference endpoints' API keys, where set)
        schema.setdefault("components", {})["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
        components = schema["components"].setdefault("schemas", {})
        for model in v2.OPENAPI_MODELS:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(generated.pop("$defs", {}))
            components[model.__name__] = generated
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
