"""sst2-lstm: SST-2 sentiment classifier, each pipeline step as a function."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from app.manifest import TensorSpec, TextPreprocessing
from app.preprocess import Tokenizer, pad_sequences
from training import data
from training.config import LSTMConfig
from training.export import export_onnx, max_parity_error
from training.models import SentimentLSTM
from training.prune import MagnitudePruning, count_macs, count_params, sparsity
from training.quantize import convert_fp16, quantize_dynamic_int8
from training.train import Batch, accuracy, fit, predict_logits, seed_everything
from training.workspace import Workspace

NAME = "sst2-lstm"
TASK = "text-classification"
LABELS = data.SST2_LABELS
INPUTS = [
    TensorSpec(name="token_ids", datatype="INT64", shape=[-1, -1]),
    TensorSpec(name="lengths", datatype="INT64", shape=[-1]),
]
OUTPUTS = [TensorSpec(name="logits", datatype="FP32", shape=[-1, 2])]
DYNAMIC_AXES = {"token_ids": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
VOCAB_FILE = "vocab.txt"
EXTRA_FILES = (VOCAB_FILE,)
MACS_AT_LENGTH = 20  # MACs of a recurrent model grow with length; report them at 20 tokens


def _spec(config: LSTMConfig) -> TextPreprocessing:
    return TextPreprocessing(max_length=config.max_length, vocabulary_file=VOCAB_FILE)


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

    def train_batches(self, epoch: int) -> list[Batch]:
        """Shuffled, then sorted by length within windows of 50 batches to cut padding."""
        rng = np.random.default_rng(self.config.seed * 1000 + epoch)
        order = rng.permutation(len(self.train[0]))
        window = self.config.batch_size * 50
        lengths = np.array([len(s) for s in self.train[0]])
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches = self._batches(self.train, order, self.config.batch_size)
        rng.shuffle(batches)  # type: ignore[arg-type]
        return batches

    def eval_batches(self, split: str) -> list[Batch]:
        seqs = getattr(self, split)
        return self._batches(seqs, np.arange(len(seqs[0])), 256)

    def evaluate(self, model: torch.nn.Module, split: str = "dev") -> float:
        return accuracy(*predict_logits(model, self.eval_batches(split)))


def _describe(model: SentimentLSTM) -> dict[str, float | int]:
    example = (torch.ones(1, MACS_AT_LENGTH, dtype=torch.int64), torch.tensor([MACS_AT_LENGTH]))
    return {"params": count_params(model), "macs": count_macs(model, *example),
            "sparsity": round(sparsity(model), 4)}


def _tokenizer(ws: Workspace, config: LSTMConfig) -> Tokenizer:
    return Tokenizer.from_file(ws.root / VOCAB_FILE, _spec(config))


def _load(ws: Workspace, stage: str, config: LSTMConfig) -> SentimentLSTM:
    ckpt = ws.load_checkpoint(stage)
    model = SentimentLSTM(ckpt["vocab_size"], config.embed_dim, config.hidden, dropout=config.dropout)
    model.load_state_dict(ckpt["state"])
    return model


def train(ws: Workspace, config: LSTMConfig) -> None:
    seed_everything(config.seed)
    d = SentimentData(ws, config)
    d.tokenizer.save(ws.root / VOCAB_FILE)
    model = SentimentLSTM(len(d.tokenizer.vocabulary), config.embed_dim, config.hidden, dropout=config.dropout)
    history = fit(model, d.train_batches, d.evaluate, stage="train", epochs=config.epochs, lr=config.lr,
                  weight_decay=config.weight_decay)
    ws.save_checkpoint("trained", {"vocab_size": len(d.tokenizer.vocabulary), "state": model.state_dict()})
    folder = data.find_dataset_folder(ws.data_dir, "sst2", "train.tsv")
    ws.update_record(
        name=NAME, config=config.as_dict(), preprocessing=_spec(config).model_dump(),
        history=[asdict(h) for h in history], vocabulary_size=len(d.tokenizer.vocabulary),
        baseline={**_describe(model), "accuracy": d.evaluate(model, "test"), "dev_accuracy": d.evaluate(model)},
        data_sha256=data.file_checksums(sorted(folder.glob("*.tsv"))),
    )


def prune(ws: Workspace, config: LSTMConfig) -> None:
    seed_everything(config.seed)
    d = SentimentData(ws, config, _tokenizer(ws, config))
    model = _load(ws, "trained", config)
    weights = [model.embedding.weight, model.fc.weight] + [
        getattr(lstm, name) for lstm in (model.forward_lstm, model.backward_lstm)
        for name in ("weight_ih_l0", "weight_hh_l0")
    ]
    masks = MagnitudePruning(weights, config.sparsity)
    before = d.evaluate(model, "test")
    history = fit(model, d.train_batches, d.evaluate, stage="finetune", epochs=config.finetune_epochs,
                  lr=config.finetune_lr, weight_decay=config.weight_decay, after_step=masks.apply)
    ws.save_checkpoint("pruned", {"vocab_size": len(d.tokenizer.vocabulary), "state": model.state_dict()})
    ws.update_record(
        finetune_history=[asdict(h) for h in history],
        pruned={**_describe(model), "accuracy": d.evaluate(model, "test"), "accuracy_before_finetune": before},
    )


def export(ws: Workspace, config: LSTMConfig) -> None:
    d = SentimentData(ws, config, _tokenizer(ws, config))
    model = _load(ws, "pruned", config)
    example = pad_sequences(d.test[0][:3])
    path = export_onnx(model, tuple(torch.from_numpy(a) for a in example), ws.onnx("fp32"),
                       input_names=["token_ids", "lengths"], output_names=["logits"],
                       dynamic_axes=DYNAMIC_AXES)
    feeds = []
    for n in (1, 5, 64):
        ids, lengths = pad_sequences(d.test[0][:n])
        feeds.append({"token_ids": ids, "lengths": lengths})
        # The same rows padded further must give the same logits.
        wider = np.pad(ids, ((0, 0), (0, 9)))
        feeds.append({"token_ids": wider, "lengths": lengths})
    ws.update_record(parity_max_abs_error=max_parity_error(model, path, feeds))


def quantize(ws: Workspace, config: LSTMConfig) -> None:
    quantize_dynamic_int8(ws.onnx("fp32"), ws.onnx("int8"), config.int8_op_types)
    convert_fp16(ws.onnx("fp32"), ws.onnx("fp16"))


def scoring_data(ws: Workspace, config: LSTMConfig) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    d = SentimentData(ws, config, _tokenizer(ws, config))
    feeds = [{"token_ids": x.numpy(), "lengths": n.numpy()} for (x, n), _ in d.eval_batches("test")]
    return feeds, d.test[1]


def latency_feed(feeds: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    lengths = feeds[0]["lengths"][:batch]
    return {"token_ids": feeds[0]["token_ids"][:batch, : int(lengths.max())], "lengths": lengths}
