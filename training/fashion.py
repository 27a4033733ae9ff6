"""fashion-cnn: Fashion-MNIST image classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.manifest import ImagePreprocessing, TensorSpec
from app.preprocess import normalize_pixels
from training import data
from training.config import CNNConfig
from training.distill import Ensemble, teacher_loss
from training.export import export_onnx, max_parity_error
from training.models import FashionCNN
from training.prune import MagnitudePruning, prune_cnn_structured
from training.quantize import convert_fp16, quantize_static_int8
from training.recipe import Feed, describe, history, load_model, save_model
from training.train import Batch, Loss, accuracy, fit, predict_logits, seed_everything
from training.workspace import Workspace

# The model's one input: every other mention of its name or size reads it from here.
PIXELS = TensorSpec(name="pixels", datatype="FP32", shape=[-1, 1, 28, 28])
_, CHANNELS, HEIGHT, WIDTH = PIXELS.shape
LOGITS = TensorSpec(name="logits", datatype="FP32", shape=[-1, len(data.FASHION_MNIST_LABELS)])


class FashionData:
    """Normalized tensors for both splits, built with the serving preprocessing."""

    def __init__(self, ws: Workspace, config: CNNConfig) -> None:
        train, test = data.load_fashion_mnist(ws.data_dir)
        if config.train_limit:
            train = data.ImageSplit(train.images[: config.train_limit], train.labels[: config.train_limit])
        pixels = train.images.astype(np.float64) / 255.0
        self.spec = ImagePreprocessing(height=HEIGHT, width=WIDTH, channels=CHANNELS, scale=1 / 255,
                                       mean=round(float(pixels.mean()), 4),
                                       std=round(float(pixels.std()), 4))
        self.train_x = torch.from_numpy(normalize_pixels(train.images, self.spec))
        self.train_y = torch.from_numpy(train.labels)
        self.test_x = torch.from_numpy(normalize_pixels(test.images, self.spec))
        self.test_y = torch.from_numpy(test.labels)
        self.background = float(normalize_pixels(np.zeros((1, HEIGHT, WIDTH)), self.spec).flat[0])
        self.config = config

    def train_batches(self, shift_pixels: int) -> Callable[[int], list[Batch]]:
        """Each epoch's shuffled batches, with random horizontal flips (if configured) and
        random shifts of up to `shift_pixels`."""
        return lambda epoch: self._augmented(epoch, shift_pixels)

    def _augmented(self, epoch: int, shift_pixels: int) -> list[Batch]:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_x), generator=gen)
        batches = []
        for idx in order.split(c.batch_size):
            x = self.train_x[idx]
            if c.flip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            if shift_pixels:
                s = shift_pixels
                padded = torch.nn.functional.pad(x, (s, s, s, s), value=self.background)
                dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
                x = padded[:, :, dy : dy + HEIGHT, dx : dx + WIDTH]
            batches.append(((x,), self.train_y[idx]))
        return batches

    def test_batches(self, size: int = 1000) -> list[Batch]:
        return [((x,), y) for x, y in zip(self.test_x.split(size), self.test_y.split(size), strict=True)]

    def evaluate(self, model: torch.nn.Module) -> float:
        return accuracy(*predict_logits(model, self.test_batches()))


def build_model(widths: dict[str, int], config: CNNConfig) -> FashionCNN:
    """A FashionCNN of the given widths with the configured dropout: every model the
    recipe trains or fine-tunes is made here."""
    return FashionCNN((widths["conv1"], widths["conv2"]), widths["hidden"], len(data.FASHION_MNIST_LABELS),
                      dropout=config.dropout)


def build_teacher(widths: dict[str, int], config: CNNConfig) -> FashionCNN:
    return FashionCNN((widths["conv1"], widths["conv2"]), widths["hidden"], len(data.FASHION_MNIST_LABELS),
                      dropout=config.teacher_dropout)


def wide_settings(config: CNNConfig) -> dict[str, Any]:
    """What makes the wide teacher: a checkpoint trained with other settings is trained again."""
    names = ("seed", "batch_size", "weight_decay", "flip", "teacher_channels", "teacher_hidden",
             "teacher_dropout", "teacher_epochs", "teacher_lr", "teacher_shift_pixels", "train_limit")
    return {n: getattr(config, n) for n in names}


class FashionRecipe:
    name = "fashion-cnn"
    description = "fashion-cnn: Fashion-MNIST image classifier, each pipeline step as a function."
    task = "image-classification"
    labels = data.FASHION_MNIST_LABELS
    inputs = [PIXELS]
    outputs = [LOGITS]
    extra_files: tuple[str, ...] = ()
    config_type = CNNConfig
    dynamic_axes = {PIXELS.name: {0: "batch"}, LOGITS.name: {0: "batch"}}

    def train(self, ws: Workspace, config: CNNConfig) -> None:
        seed_everything(config.seed)
        d = FashionData(ws, config)
        c1, c2 = config.channels
        model = build_model({"conv1": c1, "conv2": c2, "hidden": config.hidden}, config)
        records = self._fit(model, d, "train", config.epochs, config.lr)
        save_model(ws, "trained", model, model.widths)
        folder = data.find_dataset_folder(ws.data_dir, "fashion-mnist", "train-images-idx3-ubyte.gz")
        ws.update_record(
            name=self.name, config=config.as_dict(), preprocessing=d.spec.model_dump(), history=records,
            baseline={**self._describe(model), "accuracy": d.evaluate(model)},
            data_sha256=data.file_checksums(sorted(folder.glob("*.gz"))),
        )

    def load(self, ws: Workspace, stage: str, config: CNNConfig) -> FashionCNN:
        return load_model(ws, stage, lambda widths: build_model(widths, config))

    def prune(self, ws: Workspace, config: CNNConfig) -> None:
        """Structured pruning, then fine-tuning on the labels alone: the student without
        distillation. The pruned start is kept for the distill step."""
        seed_everything(config.seed)
        d = FashionData(ws, config)
        model = prune_cnn_structured(self.load(ws, "trained", config), config.keep_channels, config.keep_hidden,
                                     config.width_multiple)
        save_model(ws, "pruned_start", model, model.widths)
        before_finetune = d.evaluate(model)
        records = self._fine_tune(model, d, "finetune", loss=None)
        save_model(ws, "pruned", model, model.widths)
        ws.update_record(
            finetune_history=records,
            pruned={**self._describe(model), "accuracy": d.evaluate(model),
                    "accuracy_before_finetune": before_finetune, "widths": model.widths},
        )

    def distill(self, ws: Workspace, config: CNNConfig) -> None:
        """Train the teacher (unless one with the same settings is there), then the pruned
        student again from the same start, now on the labels and the teacher's outputs."""
        d = FashionData(ws, config)
        teacher = self._teacher(ws, d, config)
        seed_everything(config.seed)
        student = self.load(ws, "pruned_start", config)
        records = self._fine_tune(student, d, "distill", loss=teacher_loss(teacher, config.distillation))
        save_model(ws, "distilled", student, student.widths)
        ws.update_record(
            distill_history=records,
            distilled={**self._describe(student), "accuracy": d.evaluate(student), "widths": student.widths,
                       "temperature": config.distill_temperature, "soft_weight": config.distill_soft_weight},
        )

    def _teacher(self, ws: Workspace, d: FashionData, config: CNNConfig) -> nn.Module:
        """The wide CNN, with the trained (unpruned) model beside it where configured: the
        mean of two differently made models is a better teacher than either."""
        teacher = self.teacher(ws, config, self._wide(ws, d, config))
        ws.update_record(teacher={**self._describe(teacher), "accuracy": d.evaluate(teacher),
                                  "members": ["wide"] + (["trained"] if config.teacher_with_trained else [])})
        return teacher

    def teacher(self, ws: Workspace, config: CNNConfig, wide: FashionCNN | None = None) -> nn.Module:
        wide = wide or load_model(ws, "wide", lambda widths: build_teacher(widths, config))
        return Ensemble([wide, self.load(ws, "trained", config)]) if config.teacher_with_trained else wide

    def _wide(self, ws: Workspace, d: FashionData, config: CNNConfig) -> FashionCNN:
        """The wide CNN, trained unless a checkpoint made with the same settings is there."""
        settings = wide_settings(config)
        if ws.holds("wide", settings):
            return load_model(ws, "wide", lambda widths: build_teacher(widths, config))
        seed_everything(config.seed)
        c1, c2 = config.teacher_channels
        wide = build_teacher({"conv1": c1, "conv2": c2, "hidden": config.teacher_hidden}, config)
        records = history(fit(wide, d.train_batches(config.teacher_shift_pixels), d.evaluate, stage="wide teacher",
                              epochs=config.teacher_epochs, lr=config.teacher_lr, weight_decay=config.weight_decay))
        save_model(ws, "wide", wide, wide.widths)
        ws.update_record(teacher_history=records, wide={
            **self._describe(wide), "accuracy": d.evaluate(wide), "widths": wide.widths, "settings": settings})
        return wide

    def export(self, ws: Workspace, config: CNNConfig) -> None:
        """The served student to ONNX fp32, checked against PyTorch."""
        d = FashionData(ws, config)
        model = self.stage_model(ws, config.served_student, config)
        path = self._export(model, ws.onnx("fp32"))
        feeds = [{PIXELS.name: d.test_x[:n].numpy()} for n in (1, 7, 64, 257)]
        ws.update_record(parity_max_abs_error=max_parity_error(model, path, feeds))

    def stage_model(self, ws: Workspace, stage: str, config: CNNConfig) -> nn.Module:
        """A stage's model as exported: eval mode, BatchNorm folded."""
        if stage == "teacher":
            teacher = self.teacher(ws, config)
            members = teacher.members if isinstance(teacher, Ensemble) else [teacher]
            fused = [m.fused_for_export() for m in members]  # type: ignore[operator]
            return Ensemble(fused) if len(fused) > 1 else fused[0]
        return self.load(ws, stage, config).fused_for_export()

    def export_stage(self, ws: Workspace, stage: str, config: CNNConfig, path: Path) -> Path:
        return self._export(self.stage_model(ws, stage, config), path)

    def _export(self, model: nn.Module, path: Path) -> Path:
        return export_onnx(model, (torch.zeros(2, CHANNELS, HEIGHT, WIDTH),), path, input_names=[PIXELS.name],
                           output_names=[LOGITS.name], dynamic_axes=self.dynamic_axes)

    def quantize(self, ws: Workspace, config: CNNConfig) -> None:
        d = FashionData(ws, config)
        rng = np.random.default_rng(config.seed)
        picks = rng.choice(len(d.train_x), size=min(config.calibration_images, len(d.train_x)), replace=False)
        calibration = [{PIXELS.name: d.train_x[i : i + 1].numpy()} for i in np.sort(picks)]
        quantize_static_int8(ws.onnx("fp32"), ws.onnx("int8"), calibration, config.int8_op_types)
        convert_fp16(ws.onnx("fp32"), ws.onnx("fp16"))

    def scoring_data(self, ws: Workspace, config: CNNConfig) -> tuple[list[Feed], np.ndarray]:
        d = FashionData(ws, config)
        feeds = [{PIXELS.name: x.numpy()} for x in d.test_x.split(1000)]
        return feeds, d.test_y.numpy()

    def latency_feed(self, feeds: list[Feed], batch: int) -> Feed:
        return {PIXELS.name: feeds[0][PIXELS.name][:batch]}

    @staticmethod
    def _describe(model: FashionCNN) -> dict[str, float | int]:
        return describe(model, torch.zeros(1, CHANNELS, HEIGHT, WIDTH))

    @staticmethod
    def _fit(model: FashionCNN, d: FashionData, stage: str, epochs: int, lr: float) -> list[dict[str, Any]]:
        c = d.config
        return history(fit(model, d.train_batches(c.shift_pixels), d.evaluate, stage=stage, epochs=epochs, lr=lr,
                           weight_decay=c.weight_decay, label_smoothing=c.label_smoothing))

    @staticmethod
    def _fine_tune(model: FashionCNN, d: FashionData, stage: str, loss: Loss | None) -> list[dict[str, Any]]:
        """The student's training after pruning, with or without a teacher; fc1 keeps its
        magnitude-pruned zeros (it holds 95% of the dense weights; fc2 is too small to matter)."""
        c = d.config
        masks = MagnitudePruning([model.fc1.weight], c.dense_sparsity)
        return history(fit(model, d.train_batches(c.shift_pixels), d.evaluate, stage=stage,
                           epochs=c.finetune_epochs, lr=c.finetune_lr, weight_decay=c.weight_decay,
                           label_smoothing=c.label_smoothing, after_step=masks.apply, loss=loss))


RECIPE = FashionRecipe()
