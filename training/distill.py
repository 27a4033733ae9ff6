"""Knowledge distillation: Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a
Neural Network" (arXiv:1503.02531).

The student learns from a mix of the hard labels and the teacher's outputs softened by a
temperature T:

    loss = (1 - w) * CE(student, label) + w * T² * CE(softmax(student / T), softmax(teacher / T))

The soft term is a cross-entropy against the teacher's distribution; it differs from the
KL divergence only by the teacher's entropy, which has no gradient, so the two train the
same. Its gradients shrink as 1/T², hence the T²: the mix `w` then means the same at any T.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.config import Distillation
from training.train import Loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      settings: Distillation) -> torch.Tensor:
    t, w = settings.temperature, settings.soft_weight
    hard = F.cross_entropy(student_logits, labels)
    soft_targets = F.softmax(teacher_logits / t, dim=1)
    soft = F.cross_entropy(student_logits / t, soft_targets) * t * t
    return (1 - w) * hard + w * soft


def teacher_loss(teacher: nn.Module, settings: Distillation) -> Loss:
    """A training loss that asks `teacher` (frozen, in eval mode) about each batch as it
    comes, so the student's augmented inputs get the teacher's view of the same pixels."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(student_logits: torch.Tensor, labels: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(*inputs)
        return distillation_loss(student_logits, teacher_logits, labels, settings)

    return loss


class Ensemble(nn.Module):
    """Several models answering as one: the mean of their logits. An ensemble of a few
    independently seeded models is a standard, cheap teacher (Hinton et al. section 1)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(*inputs) for m in self.members]).mean(0)
