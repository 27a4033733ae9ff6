"""The training loop shared by both models: AdamW, one-cycle LR with cosine annealing,
progress bars, history."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (model inputs, labels)
Loss = Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]
"""(logits, labels, model inputs) -> loss; the inputs let a distillation loss ask a teacher."""


@dataclass
class EpochRecord:
    stage: str
    epoch: int
    train_loss: float
    train_accuracy: float
    eval_accuracy: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    evaluate: Callable[[nn.Module], float],
    *,
    stage: str,
    epochs: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float = 0.0,
    after_step: Callable[[], None] | None = None,
    loss: Loss | None = None,
) -> list[EpochRecord]:
    """Train for `epochs`; `batches(epoch)` yields that epoch's shuffled batches. The loss
    is cross-entropy on the labels unless `loss` is given."""
    if epochs <= 0:
        return []
    steps_per_epoch = _count(batches(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # Warm up for a quarter of the steps, then cosine annealing down to lr / 1e4.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25, anneal_strategy="cos"
    )
    cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss_fn: Loss = loss or (lambda logits, labels, _inputs: cross_entropy(logits, labels))
    history = []
    for epoch in range(epochs):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"{stage} {epoch + 1}/{epochs}",
                   leave=False, dynamic_ncols=True)
        for inputs, labels in bar:
            optimizer.zero_grad(set_to_none=True)
            logits = model(*inputs)
            batch_loss = loss_fn(logits, labels, inputs)
            batch_loss.backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step()
            total_loss += batch_loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        eval_acc = evaluate(model)
        record = EpochRecord(stage, epoch + 1, total_loss / seen, correct / seen, eval_acc)
        tqdm.write(f"{stage} epoch {epoch + 1}/{epochs}: loss {record.train_loss:.4f} "
                   f"train acc {record.train_accuracy:.4f} eval acc {eval_acc:.4f}")
        history.append(record)
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) over all batches, in eval mode."""
    model.eval()
    logits, labels = [], []
    for inputs, y in batches:
        logits.append(model(*inputs).numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _count(batches: Iterable[Batch]) -> int:
    if isinstance(batches, Sized):
        return len(batches)
    return sum(1 for _ in batches)
