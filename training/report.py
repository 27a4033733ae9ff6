"""The human-readable side of an artifact: a markdown report, PNG plots, a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines
import matplotlib.pyplot as plt  # noqa: E402

from app.manifest import Manifest  # noqa: E402


def summary_rows(manifest: Manifest) -> list[list[str]]:
    rows = []
    for variant, entry in manifest.variants.items():
        m = entry.metrics
        rows.append([
            variant, f"{m['accuracy']:.4f}", f"{m['agreement_with_fp32']:.4f}",
            f"{entry.size_bytes / 1e6:.2f}", f"{m['params']:,}", f"{m['macs']:,}", f"{m['sparsity']:.2f}",
            f"{m['latency_ms_batch1']:.3f}", f"{m['latency_ms_batch64']:.3f}",
        ])
    return rows


HEADER = ["variant", "test acc", "agree fp32", "MB", "params", "MACs/item", "sparsity",
          "ms @1", "ms @64"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows])


STAGE_NAMES = {"teacher": "teacher (not served)", "trained": "trained, before pruning",
               "pruned": "pruned student, labels only", "distilled": "pruned student, distilled"}
PLOT_LABELS = {"teacher": "teacher (not served)", "trained": "trained", "pruned": "pruned student",
               "distilled": "distilled"}
STUDENT_HISTORY = {"pruned": "finetune_history", "distilled": "distill_history"}
"""The record key of each student's epochs after pruning."""


def stage_rows(record: dict[str, Any]) -> list[list[str]]:
    return [[STAGE_NAMES.get(stage, stage), f"{s['accuracy']:.4f}", f"{s['params']:,}", f"{s['macs']:,}",
             f"{s['latency_ms_batch1']:.3f}", f"{s['latency_ms_batch64']:.3f}"]
            for stage, s in record.get("stages", {}).items()]


def _distillation_section(record: dict[str, Any], student: str) -> list[str]:
    if "stages" not in record:
        return []
    lines = ["## Distillation", "",
             markdown_table(["model", "test acc (ONNX fp32)", "params", "MACs/item", "ms @1", "ms @64"],
                            stage_rows(record)), ""]
    members = record.get("teacher", {}).get("members")
    if members:
        named = ", ".join(f"{m:.4f}" if isinstance(m, float) else str(m) for m in members)
        lines += [f"Teacher: the mean of the logits of {len(members)} models ({named}).", ""]
    distilled = record.get("distilled")
    if distilled:
        lines += [f"Temperature {distilled['temperature']}, soft-target weight {distilled['soft_weight']} "
                  f"(Hinton et al. 2015); served: the {STAGE_NAMES[student]}.", ""]
    lines += ["Every row exported to ONNX fp32 and timed the same way as the variants above.", "",
              "![accuracy vs cost](accuracy_vs_cost.png)", ""]
    return lines


def write(target: Path, manifest: Manifest, record: dict[str, Any]) -> None:
    student = manifest.training.get("student", "pruned")
    _plot_curves(target / "training_curves.png", record, student)
    _plot_variants(target / "variants.png", manifest)
    if "stages" in record:
        _plot_cost(target / "accuracy_vs_cost.png", manifest, record)
    base, pruned = record["baseline"], record["pruned"]
    lines = [
        f"# {manifest.name} v{manifest.version}", "", manifest.description, "",
        "## Variants (ONNX Runtime, CPU)", "", markdown_table(HEADER, summary_rows(manifest)), "",
        "Latency: median of 50 runs after warm-up, ORT default threads, on the build machine.", "",
        "## Pruning", "",
        markdown_table(["model", "params", "MACs/item", "sparsity", "test acc"], [
            ["trained", f"{base['params']:,}", f"{base['macs']:,}", f"{base['sparsity']:.2f}", f"{base['accuracy']:.4f}"],
            ["pruned + fine-tuned", f"{pruned['params']:,}", f"{pruned['macs']:,}", f"{pruned['sparsity']:.2f}",
             f"{pruned['accuracy']:.4f}"],
        ]), "",
        f"MACs change: {100 * (pruned['macs'] / base['macs'] - 1):+.1f}%; "
        f"accuracy change: {100 * (pruned['accuracy'] - base['accuracy']):+.2f} points.", "",
        f"ONNX fp32 vs PyTorch max |logit difference|: {record.get('parity_max_abs_error', float('nan')):.2e}", "",
        *_distillation_section(record, student),
        "![training curves](training_curves.png)", "", "![variants](variants.png)", "",
    ]
    (target / "report.md").write_text("\n".join(lines))


def _plot_curves(path: Path, record: dict[str, Any], student: str) -> None:
    # The trained model's epochs, then the served student's (fine-tuned or distilled).
    history = record.get("history", []) + record.get(STUDENT_HISTORY[student], [])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    x = list(range(1, len(history) + 1))
    ax_loss.plot(x, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch (train, then fine-tune)")
    ax_acc.plot(x, [h["train_accuracy"] for h in history], marker="o", label="train")
    ax_acc.plot(x, [h["eval_accuracy"] for h in history], marker="o", label="eval")
    ax_acc.set(title="accuracy", xlabel="epoch (train, then fine-tune)")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_variants(path: Path, manifest: Manifest) -> None:
    fig, (ax_size, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    for variant, entry in manifest.variants.items():
        acc = entry.metrics["accuracy"]
        ax_size.scatter(entry.size_bytes / 1e6, acc, s=60)
        ax_size.annotate(variant, (entry.size_bytes / 1e6, acc))
        lat = entry.metrics["latency_ms_batch64"]
        ax_lat.scatter(lat, acc, s=60)
        ax_lat.annotate(variant, (lat, acc))
    ax_size.set(title="accuracy vs size", xlabel="MB", ylabel="test accuracy")
    ax_lat.set(title="accuracy vs CPU latency (batch 64)", xlabel="ms", ylabel="test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_cost(path: Path, manifest: Manifest, record: dict[str, Any]) -> None:
    """Accuracy against compute (MACs) and against CPU latency at batch 64: every stage
    the build made and every served variant."""
    points = [(PLOT_LABELS.get(stage, stage), s) for stage, s in record["stages"].items()]
    points += [(f"served {v}", e.metrics) for v, e in manifest.variants.items()]
    fig, (ax_macs, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, s in points:
        for ax, x in ((ax_macs, s["macs"] / 1e6), (ax_lat, s["latency_ms_batch64"])):
            ax.scatter(x, s["accuracy"], s=60)
            ax.annotate(name, (x, s["accuracy"]), fontsize=8)
    ax_macs.set(title="accuracy vs compute", xlabel="million MACs per item", ylabel="test accuracy")
    ax_lat.set(title="accuracy vs CPU latency (batch 64)", xlabel="ms", ylabel="test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
