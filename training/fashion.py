"""fashion-cnn: Fashion-MNIST image classifier, each pipeline step as a function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from app.manifest import ImagePreprocessing, TensorSpec
from app.preprocess import normalize_pixels
from training import data
from training.config import CNNConfig
from training.export import export_onnx, max_parity_error
from training.models import FashionCNN
from training.prune import (
    MagnitudePruning,
    count_macs,
    count_params,
    prune_cnn_structured,
    sparsity,
)
from training.quantize import convert_fp16, quantize_static_int8
from training.train import Batch, accuracy, fit, predict_logits, seed_everything
from training.workspace import Workspace

NAME = "fashion-cnn"
TASK = "image-classification"
INPUTS = [TensorSpec(name="pixels", datatype="FP32", shape=[-1, 1, 28, 28])]
OUTPUTS = [TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])]
DYNAMIC_AXES = {"pixels": {0: "batch"}, "logits": {0: "batch"}}


class FashionData:
    """Normalized tensors for both splits, built with the serving preprocessing."""

    def __init__(self, ws: Workspace, config: CNNConfig) -> None:
        train, test = data.load_fashion_mnist(ws.data_dir)
        if config.train_limit:
            train = data.ImageSplit(train.images[: config.train_limit], train.labels[: config.train_limit])
        pixels = train.images.astype(np.float64) / 255.0
        self.spec = ImagePreprocessing(height=28, width=28, channels=1, scale=1 / 255,
                                       mean=round(float(pixels.mean()), 4),
                                       std=round(float(pixels.std()), 4))
        self.train_x = torch.from_numpy(normalize_pixels(train.images, self.spec))
        self.train_y = torch.from_numpy(train.labels)
        self.test_x = torch.from_numpy(normalize_pixels(test.images, self.spec))
        self.test_y = torch.from_numpy(test.labels)
        self.background = float(normalize_pixels(np.zeros((1, 28, 28)), self.spec).flat[0])
        self.config = config

    def train_batches(self, epoch: int) -> list[Batch]:
        """Shuffled batches with random horizontal flips and (optionally) shifts."""
        c = self.config
        gen = torch.Generator().manual_seed(c.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_x), generator=gen)
        batches = []
        for idx in order.split(c.batch_size):
            x = self.train_x[idx]
            if c.flip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            if c.shift_pixels:
                s = c.shift_pixels
                padded = torch.nn.functional.pad(x, (s, s, s, s), value=self.background)
                dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
                x = padded[:, :, dy : dy + 28, dx : dx + 28]
            batches.append(((x,), self.train_y[idx]))
        return batches

    def test_batches(self, size: int = 1000) -> list[Batch]:
        return [((x,), y) for x, y in zip(self.test_x.split(size), self.test_y.split(size), strict=True)]

    def evaluate(self, model: torch.nn.Module) -> float:
        return accuracy(*predict_logits(model, self.test_batches()))


def _describe(model: FashionCNN) -> dict[str, float | int]:
    return {"params": count_params(model), "macs": count_macs(model, torch.zeros(1, 1, 28, 28)),
            "sparsity": round(sparsity(model), 4)}


def _fit(model: FashionCNN, d: FashionData, stage: str, epochs: int, lr: float,
         after_step: Callable[[], None] | None = None) -> list[dict]:
    c = d.config
    history = fit(model, d.train_batches, d.evaluate, stage=stage, epochs=epochs, lr=lr,
                  weight_decay=c.weight_decay, label_smoothing=c.label_smoothing,
                  after_step=after_step)
    return [asdict(h) for h in history]


def train(ws: Workspace, config: CNNConfig) -> None:
    seed_everything(config.seed)
    d = FashionData(ws, config)
    model = FashionCNN(config.channels, config.hidden, dropout=config.dropout)
    history = _fit(model, d, "train", config.epochs, config.lr)
    ws.save_checkpoint("trained", {"widths": model.widths, "state": model.state_dict()})
    ws.update_record(
        name=NAME, config=config.as_dict(), preprocessing=d.spec.model_dump(), history=history,
        baseline={**_describe(model), "accuracy": d.evaluate(model)},
        data_sha256=data.file_checksums(
            sorted(data.find_dataset_folder(ws.data_dir, "fashion-mnist", "train-images-idx3-ubyte.gz").glob("*.gz"))
        ),
    )


def _load(ws: Workspace, stage: str) -> FashionCNN:
    ckpt = ws.load_checkpoint(stage)
    w = ckpt["widths"]
    model = FashionCNN((w["conv1"], w["conv2"]), w["hidden"])
    model.load_state_dict(ckpt["state"])
    return model


def prune(ws: Workspace, config: CNNConfig) -> None:
    seed_everything(config.seed)
    d = FashionData(ws, config)
    model = prune_cnn_structured(_load(ws, "trained"), config.keep_channels, config.keep_hidden,
                                 config.width_multiple)
    before_finetune = d.evaluate(model)
    # fc1 holds 95% of the dense weights; fc2 (10 x hidden) is too small to be worth a point.
    masks = MagnitudePruning([model.fc1.weight], config.dense_sparsity)
    history = _fit(model, d, "finetune", config.finetune_epochs, config.finetune_lr, after_step=masks.apply)
    ws.save_checkpoint("pruned", {"widths": model.widths, "state": model.state_dict()})
    ws.update_record(
        finetune_history=history,
        pruned={**_describe(model), "accuracy": d.evaluate(model),
                "accuracy_before_finetune": before_finetune, "widths": model.widths},
    )


def export(ws: Workspace, config: CNNConfig) -> None:
    d = FashionData(ws, config)
    model = _load(ws, "pruned").fused_for_export()
    path = export_onnx(model, (d.test_x[:2],), ws.onnx("fp32"), input_names=["pixels"],
                       output_names=["logits"], dynamic_axes=DYNAMIC_AXES)
    feeds = [{"pixels": d.test_x[:n].numpy()} for n in (1, 7, 64, 257)]
    ws.update_record(parity_max_abs_error=max_parity_error(model, path, feeds))


def quantize(ws: Workspace, config: CNNConfig) -> None:
    d = FashionData(ws, config)
    rng = np.random.default_rng(config.seed)
    picks = rng.choice(len(d.train_x), size=min(config.calibration_images, len(d.train_x)), replace=False)
    calibration = [{"pixels": d.train_x[i : i + 1].numpy()} for i in np.sort(picks)]
    quantize_static_int8(ws.onnx("fp32"), ws.onnx("int8"), calibration, config.int8_op_types)
    convert_fp16(ws.onnx("fp32"), ws.onnx("fp16"))


def scoring_data(ws: Workspace, config: CNNConfig) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Test-set feeds in batches of 1000, and the labels, for scoring ONNX variants."""
    d = FashionData(ws, config)
    feeds = [{"pixels": x.numpy()} for x in d.test_x.split(1000)]
    return feeds, d.test_y.numpy()


def latency_feed(feeds: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    return {"pixels": feeds[0]["pixels"][:batch]}


LABELS = data.FASHION_MNIST_LABELS
EXTRA_FILES: tuple[str, ...] = ()
