"""`python -m app import` and `python -m app check`: bringing a user's ONNX file into the
model repository with a manifest, and validating a whole repository offline, as a
user's CI would, without serving it.

Both load each model exactly as the server does (app/loading.py), so what they accept
the server serves and what they refuse it would mark UNAVAILABLE, with the same reasons.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import onnxruntime

from app import custom_ops
from app.completion import complete, has_sequence_axes
from app.ensemble import steps_problem
from app.errors import InvalidInput, ModelNotFound
from app.graph import DROP_IN_FILE, GraphError
from app.loading import LoadError, load_version
from app.manifest import MANIFEST_FILE, Manifest, QueuePolicy, write_manifest
from app.model_facts import NO_FACTS, FactsError, ModelFacts, facts_from_json, read_labels
from app.repository.names import check_name
from app.runtime import OrtModel, OrtOptions, ort_options
from app.settings import Settings

PROG = "python -m app"
_DEFAULT_MODEL_DIR = Settings.model_fields["model_dir"].get_default(call_default_factory=True)[0]
TASKS = get_args(Manifest.model_fields["task"].annotation)


def main(argv: list[str]) -> int:
    """`import ...` or `check ...`: the exit status."""
    command, rest = argv[0], argv[1:]
    return {"import": import_model, "check": check_repository}[command](rest)


def import_model(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} import", description=(
        "Copy an ONNX model into the model repository as a new version, with a manifest: the sha256 of "
        "the file, its tensors completed from the graph, and the batching measured now."))
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("--name", required=True, help="the model's name (its folder under --model-dir)")
    parser.add_argument("--model-dir", type=Path, default=_DEFAULT_MODEL_DIR)
    parser.add_argument("--labels", type=Path, help="a file of class labels, one per line, for the first output")
    parser.add_argument("--task", choices=TASKS, help="image- or text-classification makes the V1 task "
                        "endpoints apply (give the preprocessing in --config); default: tensors")
    parser.add_argument("--config", type=Path, help="a config.json of further facts (preprocessing, "
                        "description, batching, version_policy, scores)")
    parser.add_argument("--description")
    args = parser.parse_args(argv)
    try:
        check_name(args.name)
    except InvalidInput as e:
        parser.error(e.message)
    if not args.model.is_file():
        parser.error(f"{args.model}: no such file")
    try:
        facts = _facts(args)
        beside = args.config.parent if args.config is not None else args.model.parent
        manifest, folder = _import(args.model, args.model_dir, args.name, facts, beside)
    except (FactsError, GraphError, OSError, ValueError) as e:
        print(f"{PROG} import: {args.model}: {e}", file=sys.stderr)
        return 1
    _print_decisions(manifest, folder)
    return 0


def _facts(args: argparse.Namespace) -> ModelFacts:
    """--config's facts (read as the server reads a config.json), the other flags on top."""
    facts = facts_from_json(args.config) if args.config is not None else NO_FACTS
    if facts.warmup:  # a manifest has no place for them, nor the version for their files
        raise FactsError(f"{args.config}: warm-up samples are not imported; serve the model as a drop-in (its file "
                         "and config.json in <model-dir>/<name>/<version>/, the samples' files in <name>/warmup/)")
    labels = read_labels(args.labels.parent, args.labels.name, "--labels") if args.labels is not None else None
    flags: dict[str, Any] = {k: v for k, v in {"labels": labels, "task": args.task,
                                                "description": args.description}.items() if v is not None}
    return ModelFacts(**flags, source="the command line").over(facts) if flags else facts


def _import(source: Path, model_dir: Path, name: str, facts: ModelFacts, beside: Path) -> tuple[Manifest, Path]:
    """Build the new version in a hidden folder beside the others, then rename it into
    place: a server polling the repository never sees half a version."""
    model_root = model_dir / name
    model_root.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    version = max(versions, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=f".import-{version}-", dir=model_root))
    try:
        shutil.copyfile(source, staging / DROP_IN_FILE)
        facts = facts.model_copy(update={"model_file": DROP_IN_FILE})
        vocabulary = getattr(facts.preprocessing, "vocabulary_file", None)
        if vocabulary is not None:  # a text model's: beside its config.json (`beside`)
            shutil.copyfile(beside / vocabulary, staging / vocabulary)
        model_bytes = (staging / DROP_IN_FILE).read_bytes()
        options = _ort_options(Settings()).for_model(facts.onnxruntime)
        try:
            session = OrtModel(model_bytes, options, staging)
        except Exception as e:  # ORT's own exception types for a corrupt or unsupported graph
            if _loads_beside(model_bytes, source.parent, options):
                raise GraphError(
                    "its tensors are kept in external data files beside it, which import does not copy or digest; "
                    f"serve it as a drop-in instead: {DROP_IN_FILE} and those files in <model-dir>/{name}/<version>/"
                ) from e
            raise GraphError(f"ONNX Runtime cannot load it: {type(e).__name__}: {e}"
                             f"{custom_ops.hint(str(e), options.custom_op_libraries)}") from e
        # The final folder's name: completion reads the model's name and version from it.
        named = staging.parent / str(version)
        manifest, _ = complete(session.session, named, facts, model_bytes, measure=True, run=session.run)
        manifest = manifest.model_copy(update={
            "description": facts.description or f"{name}: imported from {source.name}",
            "packages": {"onnxruntime": onnxruntime.__version__}})
        write_manifest(staging, manifest)
        staging.rename(named)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest, named


def _loads_beside(model_bytes: bytes, folder: Path, options: OrtOptions) -> bool:
    """Whether the model loads with its own folder's files: then what it lacked alone in the
    new version's folder is external data."""
    try:
        OrtModel(model_bytes, options, folder)
    except Exception:  # as above: whatever ORT raises, it does not load there either
        return False
    return True


def _print_decisions(manifest: Manifest, folder: Path) -> None:
    print(f"imported {manifest.name} version {manifest.version} into {folder}")
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            graph = f" (the graph's {spec.graph_shape(manifest.batches)})" if spec.reshape is not None else ""
            print(f"  {kind} {spec.name}: {spec.datatype} {spec.shape}{graph}")
    print(f"  task: {manifest.task}" + (f", {len(manifest.labels)} labels, scores are {manifest.scores}"
                                        if manifest.labels else ""))
    b = manifest.batching
    if b.max_batch_size == 0:
        print(f"  batching: none ({b.reason})")
    else:
        print(f"  batching: max_batch_size {b.max_batch_size}, max_queue_delay_ms {b.max_queue_delay_ms} ({b.reason})")
    if b.queue is not None:
        print(f"  queue: {_described(b.queue)}")
    if b.priorities is not None:
        levels = b.priorities
        print(f"  priority levels 1 (the highest) to {levels.levels}, default {levels.default_level}"
              + "".join(f"; level {n}: {_described(q)}" for n, q in sorted(levels.queues.items())))
    if manifest.onnxruntime is not None:
        print("  onnxruntime: " + ", ".join(f"{k} {v}" for k, v in manifest.onnxruntime.model_dump().items()))
    if manifest.sequence is not None:
        seq = manifest.sequence
        print(f"  sequences: controls {', '.join(f'{c.input} ({c.kind})' for c in seq.controls) or 'none'}; states "
              f"{', '.join(f'{s.input} <- {s.output}' for s in seq.states) or 'none'}; at most {seq.max_sequences} "
              f"active, ended when idle {seq.idle_ms:g} ms")
    print(f"  sha256 {manifest.variants['fp32'].sha256} recorded in {folder / MANIFEST_FILE}")


def _described(policy: QueuePolicy) -> str:
    """A queue policy as the import says it: its bounds, or that it has none."""
    said = [f"at most {policy.max_requests} requests"] if policy.max_requests else []
    if policy.timeout_ms:
        said.append(f"{policy.timeout_action} after {policy.timeout_ms:g} ms")
    return ", ".join(said) or "no bounds"


def _ort_options(settings: Settings) -> OrtOptions:
    """The sessions of one process, as the server's (its providers, threads and custom operators)."""
    return ort_options(settings.provider_preference, settings.intra_op_threads, settings.inference_threads,
                       custom_op_libraries=settings.custom_op_libraries)


def check_repository(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} check", description=(
        "Load every version of every model in one or more model repositories as the server would (files, "
        "digests, configuration against the graph, warm-up) without serving; print each problem with its "
        "folder. Exit status 1 if there is any."))
    parser.add_argument("model_dir", nargs="*", type=Path, default=[_DEFAULT_MODEL_DIR])
    args = parser.parse_args(argv)
    roots: list[Path] = args.model_dir
    missing = [root for root in roots if not root.is_dir()]
    for root in missing:
        print(f"{root}: not a folder", file=sys.stderr)
    if missing:
        return 1
    try:
        settings = Settings(model_dir=roots)
    except ValueError as e:  # a folder named twice
        print(f"{PROG} check: {e}", file=sys.stderr)
        return 1
    options = _ort_options(settings)
    problems = checked = 0
    loaded: dict[str, dict[int, Manifest]] = {}  # what an ensemble's steps are checked against
    holders: dict[str, list[Path]] = {}
    for root in roots:
        for model_root in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            holders.setdefault(model_root.name, []).append(model_root)
    for name, folders in sorted(holders.items()):
        if len(folders) > 1:
            print(f"{name}: not served: in more than one model directory ({', '.join(map(str, folders))})")
            problems += 1
            continue
        model_root = folders[0]
        try:
            check_name(model_root.name)
        except InvalidInput as e:
            print(f"{model_root}: not served: {e.message}")
            problems += 1
            continue
        versions = sorted((p for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        if not versions:
            print(f"{model_root}: no version folders (expected {model_root.name}/<version>/)")
            problems += 1
        for folder in versions:
            checked += 1
            problem = _check_version(folder, settings, options, loaded)
            if problem:
                print(problem)
                problems += 1
    for name, manifests in sorted(loaded.items()):
        for version, manifest in sorted(manifests.items()):
            if manifest.ensemble is not None and (problem := steps_problem(manifest, _found_in(loaded, manifest))):
                print(f"{name} version {version}: not ready when served: {problem}")
                problems += 1
    print(f"{checked} version(s) checked, {problems} problem(s)")
    return 1 if problems else 0


def _found_in(loaded: dict[str, dict[int, Manifest]], ensemble: Manifest) -> Callable[[int], Manifest]:
    """An ensemble step's model (by the step's index) among the checked ones: the version it
    names, else the newest."""
    def find(index: int) -> Manifest:
        assert ensemble.ensemble is not None
        step = ensemble.ensemble[index]
        versions = loaded.get(step.model)
        if not versions:
            raise ModelNotFound(f"model {step.model!r} is not among the models that loaded")
        if step.version is None:
            return versions[max(versions)]
        if step.version not in versions:
            raise ModelNotFound(f"model {step.model!r} has no version {step.version} that loaded")
        return versions[step.version]
    return find


def _check_version(folder: Path, settings: Settings, options: OrtOptions,
                   loaded: dict[str, dict[int, Manifest]]) -> str | None:
    try:
        model = load_version(folder, settings, options)  # configuration files included: LoadError "config"
    except LoadError as e:
        return e.message if str(folder) in e.message else f"{folder}: {e.message}"
    loaded.setdefault(model.name, {})[model.manifest.version] = model.manifest
    if model.manifest.ensemble is not None:
        steps = ", ".join(step.model for step in model.manifest.ensemble)
        print(f"{folder}: ok (an ensemble of {steps}; its steps are checked once every model is loaded)")
        return None
    b = model.manifest.batching
    batching = "does not batch" if not b.max_batch_size else f"batches up to {model.policy.max_batch_size}"
    if b.max_batch_size and has_sequence_axes(model.manifest):
        batching += (", requests of other lengths zero-padded together" if b.pad else
                     ", each of requests of one shape (batching.pad: true in a config.json pads other lengths "
                     "together, where the model masks its padding)")
    print(f"{folder}: ok ({model.manifest.task}, {batching}"
          f"{'' if model.verified else ', no digest to check (add one with import)'})")
    return None
