"""KServe's API as its own Python SDK defines it: the generated models of the `kserve`
wheel (kserve/models/*.py), each with `openapi_types` (field: type) and `attribute_map`
(field: the name in YAML), read from the wheel's source, not imported.

The SDK is KServe's maintained, versioned description of its CRDs' fields, so the objects
in deploy/kserve/ are checked against what KServe itself publishes rather than a schema
written here. It is not installed: its pins (numpy<2, an older httpx and
prometheus-client, ray) conflict with this project's, and only the model files are read.
`make .venv/.dev` downloads the wheel (KSERVE_SDK below).
"""

from __future__ import annotations

import ast
import re
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

KSERVE_VERSION = "0.14.1"
KSERVE_SDK = ROOT / ".venv" / "kserve-sdk" / f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
_PRIMITIVES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "bool": bool, "float": (int, float),
                                                   "object": object}


@cache
def models(wheel: Path = KSERVE_SDK) -> dict[str, dict[str, str]]:
    """Every SDK model: class name -> {YAML field name: the SDK's type of it}."""
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel} is missing: `make .venv/.dev` downloads KServe's SDK wheel "
                                f"(pip download --no-deps kserve=={KSERVE_VERSION})")
    found: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/v1\w+\.py", name):
                continue
            for node in ast.parse(archive.read(name)).body:
                if isinstance(node, ast.ClassDef):
                    found[node.name] = _fields(node)
    return found


def _fields(cls: ast.ClassDef) -> dict[str, str]:
    tables: dict[str, dict[str, str]] = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Dict):
            tables[node.targets[0].id] = ast.literal_eval(node.value)
    types, names = tables.get("openapi_types", {}), tables.get("attribute_map", {})
    return {names[field]: kind for field, kind in types.items()}


def problems(value: Any, kind: str) -> list[str]:
    """What in `value` is not of the SDK type `kind`: unknown fields, wrong primitive types."""
    return _walk(value, kind, kind)


def kubernetes_parts(value: Any, kind: str) -> list[tuple[str, Any]]:
    """The embedded Kubernetes objects (V1Container, V1ObjectMeta, ...: not KServe's own
    types), with their type names, for the Kubernetes schemas."""
    parts: list[tuple[str, Any]] = []
    _walk(value, kind, kind, parts)
    return parts


def _walk(value: Any, kind: str, where: str, k8s: list[tuple[str, Any]] | None = None) -> list[str]:
    issues: list[str] = []
    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        for i, item in enumerate(value):
            issues += _walk(item, kind[5:-1], f"{where}[{i}]", k8s)
        return issues
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        inner = kind[5:-1].split(",", 1)[1].strip()
        for key, item in value.items():
            issues += _walk(item, inner, f"{where}.{key}", k8s)
        return issues
    if kind in _PRIMITIVES:
        if kind == "int" and isinstance(value, bool) or not isinstance(value, _PRIMITIVES[kind]):
            return [f"{where}: expected {kind}, got {value!r}"]
        return []
    fields = models().get(kind)
    if fields is None:  # a Kubernetes type (V1Container, V1Probe, ...): not KServe's to say
        if k8s is not None:
            k8s.append((kind, value))
        return []
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({kind}), got {type(value).__name__}"]
    for key, item in value.items():
        if key not in fields:
            issues.append(f"{where}: {key!r} is not a field of {kind}")
        else:
            issues += _walk(item, fields[key], f"{where}.{key}", k8s)
    return issues
