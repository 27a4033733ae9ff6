"""ONNX Runtime custom operator libraries (`custom_op_libraries`): shared libraries that add
operators outside ONNX's own domains (onnxruntime-extensions' tokenizers and string ops,
or a library of one's own), registered with every model's sessions (app/runtime.py).

A library's code runs inside the server, so only the libraries its operator names in the
settings are loaded: a model's configuration (Triton's `model_operations`) may name one
of those and no other, whoever wrote the configuration (a repository, a load request).
Standard library only: the checks run before the server loads anything.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from pathlib import Path

REGISTER_SYMBOL = "RegisterCustomOps"
"""What ONNX Runtime calls in a custom operator library (its RegisterCustomOpsLibrary)."""

FLAG = "--custom-op-libraries (ORTSERVE_CUSTOM_OP_LIBRARIES)"


def library_problem(path: Path) -> str | None:
    """Why ONNX Runtime could not take `path` as a custom operator library, or None. Loads it
    into this process, as every session would."""
    try:
        library = ctypes.CDLL(str(path))
    except OSError as e:
        return f"custom operator library {path} cannot be loaded: {e}"
    if not hasattr(library, REGISTER_SYMBOL):
        return (f"{path} is not an ONNX Runtime custom operator library: it exports no {REGISTER_SYMBOL} "
                "function")
    return None


def not_loaded(named: Sequence[str], model_folder: Path, loaded: Sequence[str]) -> list[str]:
    """The libraries a model's configuration names that the server does not load (a relative
    path is read from the model's folder)."""
    served = {Path(path).resolve() for path in loaded}
    return [name for name in named if (model_folder / name).resolve() not in served]


def refusal(missing: Sequence[str]) -> str:
    return (f"model_operations names {', '.join(map(repr, missing))}, which this server does not load: "
            f"start it with {FLAG} naming {'it' if len(missing) == 1 else 'them'} (a library's code runs in "
            "the server, so only the libraries its settings name are loaded)")


_UNREGISTERED = re.compile(r"(?P<domain>[\w.]+):(?P<op>\w+)\(-?\d+\) is not a registered function/op")


def hint(ort_message: str, loaded: Sequence[str]) -> str:
    """What to do about ONNX Runtime's "is not a registered function/op" for an operator of a
    domain outside ONNX's (name the library that provides it), and about two libraries that
    register one domain (every session fails so). Empty for any other message."""
    where = f" (it loads {', '.join(loaded)})" if loaded else ""
    if "Domain already set in registry" in ort_message:
        return (f"; two of the custom operator libraries define the same operator domain{where}: name each "
                f"library once in {FLAG}")
    found = _UNREGISTERED.search(ort_message)
    if found is None or found["domain"] in ("", "ai.onnx", "ai.onnx.ml"):
        return ""
    return (f"; {found['domain']}:{found['op']} is a custom operator: name the library that provides it in "
            f"{FLAG}{where}; onnxruntime-extensions' is at onnxruntime_extensions.get_library_path()")
