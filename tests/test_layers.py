"""The layers of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Each layer of app/ and the app modules (or packages) it may import; anything not listed is
# out of bounds. Third-party imports are checked separately below. docs/architecture.md
# lists the rules of app.http and app.main in words: test_the_architecture_page_agrees.
LAYERS: dict[str, set[str]] = {
    "app.settings": {"app.manifest", "app.preprocess"},
    "app.errors": set(),
    "app.manifest": {"app.ensemble_plan"},
    "app.ensemble_plan": set(),
    "app.datasets": set(),
    "app.tuning": set(),
    "app.deadlines": set(),
    "app.offload": {"app.tuning"},
    "app.shutdown": set(),
    "app.processes": set(),
    "app.descriptors": set(),
    "app.listeners": set(),
    "app.keep_awake": {"app.processes"},
    "app.preprocess": {"app.manifest"},
    "app.codecs": {"app.errors", "app.manifest", "app.preprocess"},
    "app.runtime": {"app.errors", "app.manifest", "app.processes"},
    "app.graph": {"app.batching", "app.manifest"},
    "app.reshaping": {"app.errors", "app.manifest"},
    "app.response_cache": set(),
    "app.sequences": {"app.batching", "app.errors", "app.manifest"},
    "app.warmup_samples": {"app.graph", "app.manifest", "app.model_facts", "app.sequences"},
    "app.tls": {"app.processes", "app.settings"},
    "app.health_probe": set(),
    "app.custom_ops": set(),
    "app.batch_sizing": {"app.manifest"},
    "app.model_facts": {"app.errors", "app.graph", "app.manifest"},
    "app.completion": {"app.batch_sizing", "app.errors", "app.graph", "app.manifest", "app.model_facts"},
    "app.batching": {"app.batching", "app.errors", "app.tuning"},
    "app.protocol": {"app.protocol", "app.codecs", "app.errors", "app.manifest", "app.processes", "app.sequences"},
    "app.observability": {"app.observability", "app.batching", "app.errors", "app.processes"},
    "app.supervision": {"app.errors"},
    "app.served_model": {"app.batching", "app.codecs", "app.deadlines", "app.errors", "app.manifest",
                         "app.observability", "app.reshaping", "app.response_cache", "app.runtime",
                         "app.sequences", "app.supervision", "app.warmup_samples"},
    "app.ensemble": {"app.batching", "app.codecs", "app.ensemble_plan", "app.errors", "app.manifest", "app.model_facts",
                     "app.sequences", "app.served_model", "app.supervision"},
    "app.loading": {"app.batching", "app.codecs", "app.custom_ops", "app.completion", "app.ensemble", "app.graph", "app.manifest", "app.model_facts",
                    "app.observability", "app.preprocess", "app.reshaping", "app.runtime", "app.sequences",
                    "app.served_model", "app.settings", "app.supervision", "app.warmup_samples"},
    "app.repository": {"app.repository", "app.ensemble", "app.errors", "app.loading", "app.manifest", "app.model_facts",
                       "app.observability", "app.processes", "app.response_cache", "app.runtime", "app.sequences",
                       "app.served_model", "app.settings", "app.tuning"},
    "app.sequence_peers": {"app.errors", "app.processes", "app.protocol", "app.sequences", "app.served_model"},
    "app.model_tools": {"app.custom_ops", "app.completion", "app.ensemble", "app.errors", "app.graph", "app.loading", "app.manifest", "app.model_facts",
                        "app.repository", "app.runtime", "app.settings"},
    "app.inference": {"app.codecs", "app.errors", "app.manifest", "app.offload", "app.sequences", "app.served_model"},
    "app.access": {"app.errors"},
    "app.model_views": {"app.protocol", "app.repository"},
    "app.grpc": {"app.grpc", "app.access", "app.descriptors", "app.errors", "app.inference", "app.model_views", "app.observability",
                 "app.offload", "app.protocol", "app.repository", "app.settings", "app.tls"},
    "app.http": {"app.http", "app.access", "app.deadlines", "app.descriptors", "app.errors", "app.inference", "app.model_facts",
                 "app.model_views", "app.observability", "app.offload", "app.protocol", "app.repository",
                 "app.served_model", "app.settings", "app.tls", "app.tuning"},
    "app.main": {"app.http", "app.errors", "app.grpc", "app.keep_awake", "app.listeners", "app.observability", "app.offload", "app.processes", "app.protocol", "app.repository", "app.runtime",
                 "app.sequence_peers", "app.served_model", "app.settings", "app.shutdown", "app.tuning"},
    "app.__main__": {"app.custom_ops", "app.errors", "app.health_probe", "app.http", "app.listeners", "app.main", "app.model_tools", "app.observability", "app.processes", "app.runtime",
                     "app.settings", "app.tls", "app.tuning"},
    "app": set(),
}
WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def modules(package: str) -> list[tuple[str, Path]]:
    root = ROOT / package
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(module: str) -> str:
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len)


@pytest.mark.parametrize(("module", "path"), modules("app"), ids=lambda v: v if isinstance(v, str) else "")
def test_app_modules_import_only_their_lower_layers(module: str, path: Path) -> None:
    allowed = LAYERS[layer_of(module)]
    for name in imports(path):
        top = name.split(".")[0]
        if top == "app" and name != "app":
            assert layer_of(name) in allowed, f"{module} imports {name}"
        if top in WEB_FRAMEWORKS:
            assert layer_of(module) in {"app.http", "app.main", "app.__main__"}, f"{module} imports {name}"
        assert top not in {"torch", "onnx", "training", "onnxconverter_common"}, f"{module} imports {name}"


@pytest.mark.parametrize("package", ["training", "load_tests"])
def test_training_and_load_tests_use_only_the_shared_app_modules(package: str) -> None:
    shared = {"app.manifest", "app.preprocess", "app.runtime", "app.datasets"}
    if package == "load_tests":  # the auto-batching benchmark writes config.json files
        shared |= {"app.model_facts"}
    if package == "load_tests":  # measures what the service does to an input, with its own codec
        shared |= {"app.codecs", "app.errors"}
    if package == "load_tests":  # asgi_cost.py times the app itself, built in-process as app/main.py builds it
        shared |= {"app.main", "app.settings"}
    if package == "load_tests":  # worker_crash.py prints the kernel setting as the service reads it
        shared |= {"app.listeners"}
    for module, path in modules(package):
        for name in imports(path):
            if name.split(".")[0] == "app":
                assert name in shared, f"{module} imports {name}"


ARCHITECTURE = ROOT / "docs" / "architecture.md"


@pytest.mark.parametrize("layer", ["app.http", "app.main"])
def test_the_architecture_page_agrees(layer: str) -> None:
    """The page says in words what each of these layers may import; so does LAYERS."""
    page = ARCHITECTURE.read_text()
    found = re.search(rf"`{re.escape(layer)}` may import: ([^.]*)\.", page)
    assert found is not None, f"docs/architecture.md no longer says what {layer} may import"
    listed = {"app." + word.strip() for word in re.sub(r"\(and itself\)", "", found.group(1)).replace("\n", " ")
              .split(",") if word.strip()}
    assert listed == LAYERS[layer] - {layer}, f"docs/architecture.md and tests/test_layers.py differ on {layer}"


def test_the_architecture_page_names_every_module() -> None:
    """Each module of app/ appears in the page's map by its file name."""
    page = ARCHITECTURE.read_text()
    for module, path in modules("app"):
        if path.name == "__init__.py":
            continue
        assert re.search(rf"\b{re.escape(path.name)}\b", page), f"docs/architecture.md does not mention {module}"
