"""Knowledge distillation: the loss on hand-computed values, and the step on tiny data."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch", reason="needs the train extra: pip install '.[train]'")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from training.config import Distillation  # noqa: E402
from training.distill import Ensemble, distillation_loss, teacher_loss  # noqa: E402

pytestmark = pytest.mark.training

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
TEACHER = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.5, 2.5]])
LABELS = torch.tensor([0, 2])


def cross_entropy_by_hand(logits: list[float], target: list[float]) -> float:
    """-sum(target * log softmax(logits)), written out."""
    log_total = math.log(sum(math.exp(v) for v in logits))
    return -sum(p * (v - log_total) for p, v in zip(target, logits, strict=True))


def softmax_by_hand(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def test_an_all_hard_weight_is_plain_cross_entropy_on_the_labels() -> None:
    loss = distillation_loss(STUDENT, TEACHER, LABELS, Distillation(temperature=4.0, soft_weight=0.0))
    expected = sum(cross_entropy_by_hand(row, [1.0 if i == y else 0.0 for i in range(3)])
                   for row, y in zip(STUDENT.tolist(), LABELS.tolist(), strict=True)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_one_hot_teacher_at_temperature_1_with_an_all_soft_weight_is_cross_entropy_on_its_class() -> None:
    one_hot_teacher = torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, 0.0, -math.inf]])  # classes 0 and 1
    loss = distillation_loss(STUDENT, one_hot_teacher, LABELS, Distillation(temperature=1.0, soft_weight=1.0))
    expected = (cross_entropy_by_hand(STUDENT[0].tolist(), [1, 0, 0])
                + cross_entropy_by_hand(STUDENT[1].tolist(), [0, 1, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # The labels (0 and 2) play no part: the second row's teacher says class 1.
    assert loss.item() != pytest.approx(distillation_loss(STUDENT, TEACHER, LABELS, Distillation(1.0, 0.0)).item())


def test_the_soft_term_is_scaled_by_the_temperature_squared() -> None:
    t = 3.0
    loss = distillation_loss(STUDENT, TEACHER, LABELS, Distillation(temperature=t, soft_weight=1.0))
    soft = sum(cross_entropy_by_hand([v / t for v in s], softmax_by_hand([v / t for v in te]))
               for s, te in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True)) / 2
    assert loss.item() == pytest.approx(t * t * soft, rel=1e-6)


def test_the_mix_weights_the_two_terms() -> None:
    settings = Distillation(temperature=2.0, soft_weight=0.3)
    hard = distillation_loss(STUDENT, TEACHER, LABELS, Distillation(2.0, 0.0))
    soft = distillation_loss(STUDENT, TEACHER, LABELS, Distillation(2.0, 1.0))
    mixed = distillation_loss(STUDENT, TEACHER, LABELS, settings)
    assert mixed.item() == pytest.approx(0.7 * hard.item() + 0.3 * soft.item(), rel=1e-6)


@pytest.mark.parametrize(("temperature", "soft_weight"), [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_settings_out_of_range_are_refused(temperature: float, soft_weight: float) -> None:
    with pytest.raises(ValueError, match="distillation"):
        Distillation(temperature, soft_weight)


def test_the_teacher_is_frozen_and_asked_in_eval_mode() -> None:
    teacher = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9))
    loss = teacher_loss(teacher, Distillation(2.0, 1.0))
    x = torch.randn(4, 3)
    student_logits = torch.randn(4, 3, requires_grad=True)
    first = loss(student_logits, torch.zeros(4, dtype=torch.long), (x,))
    second = loss(student_logits, torch.zeros(4, dtype=torch.long), (x,))
    assert first.item() == second.item()  # no dropout noise: eval mode
    first.backward()
    assert student_logits.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_an_ensemble_answers_with_the_mean_of_its_members_logits() -> None:
    a, b = nn.Linear(2, 3), nn.Linear(2, 3)
    x = torch.randn(5, 2)
    assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
