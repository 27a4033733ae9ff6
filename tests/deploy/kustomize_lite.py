"""`kustomize build` for the features deploy/k8s uses, for machines without a kustomize
binary: resources (files and directories), namespace, labels (with includeSelectors),
images, and strategic-merge patches (maps merged key by key, lists of named items merged
by name (new ones first), everything else replaced). tests/deploy/test_k8s.py checks it against
`kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
SELECTOR_PATHS = {"Deployment": [("spec", "selector", "matchLabels"), ("spec", "template", "metadata", "labels")],
                  "Service": [("spec", "selector")],
                  "PodDisruptionBudget": [("spec", "selector", "matchLabels")]}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"}


def build(folder: Path) -> list[Object]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[Object] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        objects += build(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for patch in spec.get("patches", []):
        change = yaml.safe_load((folder / patch["path"]).read_text())
        target = next(o for o in objects if (o["kind"], o["metadata"]["name"]) ==
                      (change["kind"], change["metadata"]["name"]))
        merge(target, change)
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeSelectors"):
                for path in SELECTOR_PATHS.get(obj["kind"], []):
                    _at(obj, path).update(label["pairs"])
    for image in spec.get("images", []):
        for container in (c for obj in objects for c in _containers(obj)):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def merge(base: Any, change: Any) -> Any:
    """A strategic merge of `change` into `base`, in place where both are maps."""
    if isinstance(base, dict) and isinstance(change, dict):
        for key, value in change.items():
            base[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return base
    if isinstance(base, list) and isinstance(change, list) and all(
            isinstance(i, dict) and "name" in i for i in base + change):
        by_name = {i["name"]: i for i in base}
        added = []
        for item in change:
            if item["name"] in by_name:
                merge(by_name[item["name"]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + base  # as kustomize orders them: the patch's new items first
    return copy.deepcopy(change)


def _at(obj: Object, path: tuple[str, ...]) -> dict[str, Any]:
    node = obj
    for key in path:
        node = node.setdefault(key, {})
    return node


def _containers(obj: Object) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]
