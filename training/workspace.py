"""A model's working folder between steps: checkpoints, ONNX files and a running record.

Each step reads what the previous one left here, so any step can be rerun alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class Workspace:
    root: Path
    data_dir: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def onnx(self, variant: str) -> Path:
        return self.root / f"model.{variant}.onnx"

    def checkpoint(self, stage: str) -> Path:
        return self.root / f"{stage}.pt"

    def save_checkpoint(self, stage: str, payload: dict[str, Any]) -> None:
        torch.save(payload, self.checkpoint(stage))

    def load_checkpoint(self, stage: str) -> dict[str, Any]:
        path = self.checkpoint(stage)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the step that writes it first")
        return torch.load(path, weights_only=False)

    def holds(self, stage: str, settings: dict[str, Any]) -> bool:
        """Whether `stage`'s checkpoint is here and was made with `settings` (recorded as
        record[stage]["settings"]), so that a step can reuse it instead of training again."""
        recorded = self.record().get(stage, {}).get("settings")
        return self.checkpoint(stage).is_file() and recorded == json.loads(json.dumps(settings))

    @property
    def record_path(self) -> Path:
        return self.root / "record.json"

    def record(self) -> dict[str, Any]:
        if not self.record_path.is_file():
            return {}
        return json.loads(self.record_path.read_text())

    def update_record(self, **fields: Any) -> dict[str, Any]:
        record = self.record() | fields
        self.record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return record
