"""sst2-lstm: SST-2 sentiment classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.manifest import TensorSpec, TextPreprocessing
from app.preprocess import Tokenizer, pad_sequences
from training import data
from training.config import LSTMConfig
from training.distill import Ensemble, teacher_loss
from training.export import export_onnx, max_parity_error
from training.models import SentimentLSTM
from training.prune import MagnitudePruning
from training.quantize import convert_fp16, quantize_dynamic_int8
from training.recipe import Feed, describe, history, load_model, save_model
from training.train import Batch, EpochRecord, Loss, accuracy, fit, predict_logits, seed_everything
from training.workspace import Workspace

# The model's inputs and output: every other mention of their names reads them from here.
TOKEN_IDS = TensorSpec(name="token_ids", datatype="INT64", shape=[-1, -1])
LENGTHS = TensorSpec(name="lengths", datatype="INT64", shape=[-1])
LOGITS = TensorSpec(name="logits", datatype="FP32", shape=[-1, len(data.SST2_LABELS)])
VOCAB_FILE = "vocab.txt"
MACS_AT_LENGTH = 20  # MACs of a recurrent model grow with length; report them at 20 tokens


def _spec(config: LSTMConfig) -> TextPreprocessing:
    return TextPreprocessing(max_length=config.max_length, vocabulary_file=VOCAB_FILE)


def _feed(ids: np.ndarray, lengths: np.ndarray) -> Feed:
    return {TOKEN_IDS.name: ids, LENGTHS.name: lengths}


class SentimentData:
    def __init__(self, ws: Workspace, config: LSTMConfig, tokenizer: Tokenizer | None = None) -> None:
        train, dev, test = data.load_sst2(ws.data_dir)
        if config.train_limit:
            train = data.TextSplit(train.texts[: config.train_limit], train.labels[: config.train_limit])
        self.tokenizer = tokenizer or Tokenizer.build(train.texts, _spec(config), min_count=config.min_count)
        self.config = config
        self.train = ([self.tokenizer.encode(t) for t in train.texts], train.labels)
        self.dev = ([self.tokenizer.encode(t) for t in dev.texts], dev.labels)
        self.test = ([self.tokenizer.encode(t) for t in test.texts], test.labels)

    def _batches(self, split: tuple[list[list[int]], np.ndarray], order: np.ndarray, size: int) -> list[Batch]:
        seqs, labels = split
        out = []
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            ids, lengths = pad_sequences([seqs[i] for i in idx])
            out.append(((torch.from_numpy(ids), torch.from_numpy(lengths)), torch.from_numpy(labels[idx])))
        return out

    def train_batches(self, mask_probability: float = 0.0) -> Callable[[int], list[Batch]]:
        """Each epoch's batches: shuffled, then sorted by length within windows of 50
        batches to cut padding; each word hidden (the unknown id) with `mask_probability`."""
        return lambda epoch: self._shuffled(epoch, mask_probability)

    def _shuffled(self, epoch: int, mask_probability: float) -> list[Batch]:
        rng = np.random.default_rng(self.config.seed * 1000 + epoch)
        order = rng.permutation(len(self.train[0]))
        window = self.config.batch_size * 50
        lengths = np.array([len(s) for s in self.train[0]])
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches = self._batches(self.train, order, self.config.batch_size)
        if mask_probability:
            batches = [((self._masked(ids, rng, mask_probability), n), y) for (ids, n), y in batches]
        rng.shuffle(batches)  # type: ignore[arg-type]
        return batches

    def _masked(self, ids: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
        hide = torch.from_numpy(rng.random(tuple(ids.shape)) < probability) & (ids != 0)
        return torch.where(hide, torch.full_like(ids, self.tokenizer.unknown_id), ids)

    def eval_batches(self, split: str) -> list[Batch]:
        seqs = getattr(self, split)
        return self._batches(seqs, np.arange(len(seqs[0])), 256)

    def evaluate(self, model: torch.nn.Module, split: str = "dev") -> float:
        return accuracy(*predict_logits(model, self.eval_batches(split)))


def build_model(vocab_size: int, config: LSTMConfig) -> SentimentLSTM:
    """Every model the recipe trains or fine-tunes is made here, with the configured sizes and dropout."""
    return SentimentLSTM(vocab_size, config.embed_dim, config.hidden, len(data.SST2_LABELS), dropout=config.dropout)


def build_teacher(vocab_size: int, config: LSTMConfig) -> Ensemble:
    return Ensemble([build_model(vocab_size, config) for _ in range(config.teacher_members)])


def teacher_settings(config: LSTMConfig, vocab_size: int) -> dict[str, Any]:
    """What makes the teacher: a checkpoint trained with other settings is trained again."""
    names = ("seed", "epochs", "batch_size", "lr", "weight_decay", "embed_dim", "hidden", "dropout",
             "teacher_members", "teacher_epochs", "train_limit")
    return {**{n: getattr(config, n) for n in names}, "vocabulary_size": vocab_size}


class SentimentRecipe:
    name = "sst2-lstm"
    description = "sst2-lstm: SST-2 sentiment classifier, each pipeline step as a function."
    task = "text-classification"
    labels = data.SST2_LABELS
    inputs = [TOKEN_IDS, LENGTHS]
    outputs = [LOGITS]
    extra_files = (VOCAB_FILE,)
    config_type = LSTMConfig
    dynamic_axes = {TOKEN_IDS.name: {0: "batch", 1: "sequence"}, LENGTHS.name: {0: "batch"},
                    LOGITS.name: {0: "batch"}}

    def train(self, ws: Workspace, config: LSTMConfig) -> None:
        seed_everything(config.seed)
        d = SentimentData(ws, config)
        d.tokenizer.save(ws.root / VOCAB_FILE)
        model = build_model(len(d.tokenizer.vocabulary), config)
        records = fit(model, d.train_batches(), d.evaluate, stage="train", epochs=config.epochs, lr=config.lr,
                      weight_decay=config.weight_decay)
        save_model(ws, "trained", model, len(d.tokenizer.vocabulary))
        folder = data.find_dataset_folder(ws.data_dir, "sst2", "train.tsv")
        ws.update_record(
            name=self.name, config=config.as_dict(), preprocessing=_spec(config).model_dump(),
            history=history(records), vocabulary_size=len(d.tokenizer.vocabulary),
            baseline={**self._describe(model), "accuracy": d.evaluate(model, "test"),
                      "dev_accuracy": d.evaluate(model)},
            data_sha256=data.file_checksums(sorted(folder.glob("*.tsv"))),
        )

    def load(self, ws: Workspace, stage: str, config: LSTMConfig) -> SentimentLSTM:
        return load_model(ws, stage, lambda vocab_size: build_model(vocab_size, config))

    def prune(self, ws: Workspace, config: LSTMConfig) -> None:
        """Magnitude pruning, then fine-tuning on the labels alone: the student without distillation."""
        seed_everything(config.seed)
        d = SentimentData(ws, config, self._tokenizer(ws, config))
        model = self.load(ws, "trained", config)
        before = d.evaluate(model, "test")  # before the masks too: the trained model's figure
        records = self._fine_tune(model, d, "finetune", d.train_batches(), loss=None)
        save_model(ws, "pruned", model, len(d.tokenizer.vocabulary))
        ws.update_record(
            finetune_history=history(records),
            pruned={**self._describe(model), "accuracy": d.evaluate(model, "test"),
                    "dev_accuracy": d.evaluate(model), "accuracy_before_finetune": before},
        )

    def distill(self, ws: Workspace, config: LSTMConfig) -> None:
        """Train the teacher ensemble (unless one with the same settings is there), then
        fine-tune the pruned student from the same start on the labels and the teacher's
        outputs, over sentences with words hidden at random."""
        d = SentimentData(ws, config, self._tokenizer(ws, config))
        teacher = self._teacher(ws, d, config)
        seed_everything(config.seed)
        student = self.load(ws, "trained", config)
        records = self._fine_tune(student, d, "distill", d.train_batches(config.distill_mask_probability),
                                  loss=teacher_loss(teacher, config.distillation))
        save_model(ws, "distilled", student, len(d.tokenizer.vocabulary))
        ws.update_record(
            distill_history=history(records),
            distilled={**self._describe(student), "accuracy": d.evaluate(student, "test"),
                       "dev_accuracy": d.evaluate(student), "temperature": config.distill_temperature,
                       "soft_weight": config.distill_soft_weight,
                       "mask_probability": config.distill_mask_probability},
        )

    def _teacher(self, ws: Workspace, d: SentimentData, config: LSTMConfig) -> Ensemble:
        vocab_size = len(d.tokenizer.vocabulary)
        settings = teacher_settings(config, vocab_size)
        if ws.holds("teacher", settings):
            return load_model(ws, "teacher", lambda size: build_teacher(size, config))
        members, records = [], []
        for i in range(config.teacher_members):
            seed_everything(config.seed + 1 + i)
            member = build_model(vocab_size, config)
            records += fit(member, d.train_batches(), d.evaluate, stage=f"teacher {i + 1}",
                           epochs=config.teacher_epochs, lr=config.lr, weight_decay=config.weight_decay)
            members.append(member)
        teacher = Ensemble(members)
        save_model(ws, "teacher", teacher, vocab_size)
        ws.update_record(teacher_history=history(records), teacher={
            **self._describe(teacher), "accuracy": d.evaluate(teacher, "test"),
            "dev_accuracy": d.evaluate(teacher),
            "members": [f"seed {config.seed + 1 + i}: {d.evaluate(m, 'test'):.4f}" for i, m in enumerate(members)],
            "settings": settings})
        return teacher

    @staticmethod
    def _fine_tune(model: SentimentLSTM, d: SentimentData, stage: str, batches: Callable[[int], list[Batch]],
                   loss: Loss | None) -> list[EpochRecord]:
        c = d.config
        weights = [model.embedding.weight, model.fc.weight] + [
            getattr(lstm, name) for lstm in (model.forward_lstm, model.backward_lstm)
            for name in ("weight_ih_l0", "weight_hh_l0")
        ]
        masks = MagnitudePruning(weights, c.sparsity)
        return fit(model, batches, d.evaluate, stage=stage, epochs=c.finetune_epochs, lr=c.finetune_lr,
                   weight_decay=c.weight_decay, after_step=masks.apply, loss=loss)

    def export(self, ws: Workspace, config: LSTMConfig) -> None:
        """The served student to ONNX fp32, checked against PyTorch (padding included)."""
        d = SentimentData(ws, config, self._tokenizer(ws, config))
        model = self.load(ws, config.served_student, config)
        path = self._export(model, ws.onnx("fp32"))
        feeds = []
        for n in (1, 5, 64):
            ids, lengths = pad_sequences(d.test[0][:n])
            feeds.append(_feed(ids, lengths))
            # The same rows padded further must give the same logits.
            feeds.append(_feed(np.pad(ids, ((0, 0), (0, 9))), lengths))
        ws.update_record(parity_max_abs_error=max_parity_error(model, path, feeds))

    def export_stage(self, ws: Workspace, stage: str, config: LSTMConfig, path: Path) -> Path:
        if stage == "teacher":
            return self._export(load_model(ws, stage, lambda size: build_teacher(size, config)), path)
        return self._export(self.load(ws, stage, config), path)

    def _export(self, model: torch.nn.Module, path: Path) -> Path:
        example = pad_sequences([[1, 1, 1], [1, 1], [1]])  # unknown ids: in every vocabulary
        return export_onnx(model, tuple(torch.from_numpy(a) for a in example), path,
                           input_names=[TOKEN_IDS.name, LENGTHS.name], output_names=[LOGITS.name],
                           dynamic_axes=self.dynamic_axes)

    def quantize(self, ws: Workspace, config: LSTMConfig) -> None:
        quantize_dynamic_int8(ws.onnx("fp32"), ws.onnx("int8"), config.int8_op_types)
        convert_fp16(ws.onnx("fp32"), ws.onnx("fp16"))

    def scoring_data(self, ws: Workspace, config: LSTMConfig) -> tuple[list[Feed], np.ndarray]:
        d = SentimentData(ws, config, self._tokenizer(ws, config))
        feeds = [_feed(x.numpy(), n.numpy()) for (x, n), _ in d.eval_batches("test")]
        return feeds, d.test[1]

    def latency_feed(self, feeds: list[Feed], batch: int) -> Feed:
        lengths = feeds[0][LENGTHS.name][:batch]
        return _feed(feeds[0][TOKEN_IDS.name][:batch, : int(lengths.max())], lengths)

    @staticmethod
    def _tokenizer(ws: Workspace, config: LSTMConfig) -> Tokenizer:
        return Tokenizer.from_file(ws.root / VOCAB_FILE, _spec(config))

    @staticmethod
    def _describe(model: SentimentLSTM) -> dict[str, float | int]:
        return describe(model, torch.ones(1, MACS_AT_LENGTH, dtype=torch.int64), torch.tensor([MACS_AT_LENGTH]))


RECIPE = SentimentRecipe()
