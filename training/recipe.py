"""The interface every model recipe implements, and the pieces the recipes share.

A recipe is one model's pipeline steps (train, prune, distill, export, quantize) plus what the
pipeline needs to score and package it; training/pipeline.py runs any recipe the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from app.manifest import TensorSpec
from training.prune import count_macs, count_params, sparsity
from training.train import EpochRecord
from training.workspace import Workspace

Feed = dict[str, np.ndarray]
M = TypeVar("M", bound=nn.Module)


class Recipe(Protocol):
    name: str
    description: str
    task: str
    labels: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    extra_files: tuple[str, ...]
    """Files beside the ONNX variants that the served model needs (e.g. a vocabulary)."""
    config_type: type
    """A frozen dataclass of training/config.py; its max_batch_size and max_queue_delay_ms
    become the manifest's batching defaults."""

    def train(self, ws: Workspace, config: Any) -> None: ...

    def prune(self, ws: Workspace, config: Any) -> None:
        """Prune and fine-tune on the labels: the student without distillation."""
        ...

    def distill(self, ws: Workspace, config: Any) -> None:
        """Train the teacher, then the pruned student on the labels and the teacher's outputs."""
        ...

    def export(self, ws: Workspace, config: Any) -> None: ...

    def quantize(self, ws: Workspace, config: Any) -> None: ...

    def export_stage(self, ws: Workspace, stage: str, config: Any, path: Path) -> Path:
        """A stage's checkpoint (teacher, pruned, distilled...) as ONNX fp32, for comparing them."""
        ...

    def scoring_data(self, ws: Workspace, config: Any) -> tuple[list[Feed], np.ndarray]:
        """Test-set feeds and their labels, for scoring the ONNX variants."""
        ...

    def latency_feed(self, feeds: list[Feed], batch: int) -> Feed:
        """One feed of `batch` items, for timing."""
        ...


def describe(model: nn.Module, *example: torch.Tensor) -> dict[str, float | int]:
    """Size and compute of a model: parameters, MACs on `example`, fraction of zero weights."""
    return {"params": count_params(model), "macs": count_macs(model, *example),
            "sparsity": round(sparsity(model), 4)}


def save_model(ws: Workspace, stage: str, model: nn.Module, architecture: Any) -> None:
    """Checkpoint a model with its `architecture`: what the recipe's build_model needs,
    besides the config, to make the same model again (widths, a vocabulary size)."""
    ws.save_checkpoint(stage, {"architecture": architecture, "state": model.state_dict()})


def load_model(ws: Workspace, stage: str, build: Callable[[Any], M]) -> M:
    checkpoint = ws.load_checkpoint(stage)
    model = build(checkpoint["architecture"])
    model.load_state_dict(checkpoint["state"])
    return model


def history(records: list[EpochRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
