"""Triton's file overrides: a load whose `file:<version>/<path>` parameters carry a model's
files (tritonclient's `load_model(name, config=..., files={...})`) serves those files, with
the load's configuration, instead of the model's folder in the model directory; a later
load without files reads the model directory again.

The files are checked (each inside a version folder, no path out of it, no link) and
written into a folder of their own under `root`, which the server owns: a temporary folder
for one process, the control folder's `uploads/` for workers, which all load from it. A
model's upload is kept while its versions may be reloaded from it, and removed when a later
load replaces it (`Uploads.discard`) or at shutdown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from app.errors import InvalidInput
from app.manifest import MAX_VERSION_DIGITS

FILE_PARAMETER = "file:"
_LONGEST_NAME = 255  # bytes of one file or folder name, as Linux's file systems take them


def uploaded_files(parameters: Mapping[str, object]) -> dict[str, bytes]:
    """A load's `file:` parameters as {path in the model's folder: contents}, checked: each
    path a version folder's file (`1/model.onnx`), relative, with no `..`; the contents bytes
    (gRPC's bytes_param) or base64 text (HTTP's JSON, as tritonclient.http sends them)."""
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if not key.startswith(FILE_PARAMETER):
            continue
        path = key.removeprefix(FILE_PARAMETER)
        files[_checked_path(path)] = _contents(path, value)
    for path in files:  # one file's name is not another's folder
        folders = ["/".join(path.split("/")[:end]) for end in range(1, path.count("/") + 1)]
        clash = next((folder for folder in folders if folder in files), None)
        if clash is not None:
            raise InvalidInput(f"parameters 'file:{clash[:200]}' and 'file:{path[:200]}': one is a file, the "
                               "other puts a file inside it")
    if files and parameters.get("config") is None:
        raise InvalidInput("parameters: files (file:...) need the model's configuration beside them in "
                           "parameters.config, as Triton's file overrides do")
    return files


def _checked_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if (not path or "\\" in path or "\x00" in path or PurePosixPath(path).is_absolute() or len(parts) < 2
            or any(part in (".", "..") for part in parts) or path.endswith("/")):
        raise InvalidInput(f"parameters 'file:{path[:200]}': a file override names a file inside a version folder "
                           "of the model, as file:1/model.onnx does")
    if any(len(part.encode()) > _LONGEST_NAME for part in parts):
        raise InvalidInput(f"parameters 'file:{path[:200]}...': a file or folder name longer than {_LONGEST_NAME} bytes")
    version = parts[0]
    if not (version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS):
        raise InvalidInput(f"parameters 'file:{path[:200]}': its first folder must be a version number "
                           f"(at most {MAX_VERSION_DIGITS} digits), as in file:1/model.onnx")
    return "/".join(parts)


def _contents(path: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"parameters 'file:{path[:200]}': not base64 (a file's contents are sent as "
                               "base64 text over HTTP)") from None
    raise InvalidInput(f"parameters 'file:{path[:200]}': a file's contents are base64 text (HTTP) or bytes (gRPC)")


class Uploads:
    """The folders that uploaded models are served from, under `root` (None: a temporary
    folder of this process's, made at the first upload and removed by `close`)."""

    def __init__(self, root: Path | None = None) -> None:
        self._own = root is None
        self._root = root

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="ortserve-uploads-"))
        return self._root

    def stage(self, name: str, files: Mapping[str, bytes]) -> Path:
        """The files written as the model's folder (`<root>/<token>/<name>/`): what its load reads."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)) / name
        try:
            for path, contents in files.items():
                target = folder / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(contents)
        except BaseException:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise
        return folder

    def discard(self, folder: Path | None) -> None:
        """An upload no longer served from (a staged model folder: its holder goes with it)."""
        if folder is not None and self._root is not None and folder.parent.parent == self._root:
            shutil.rmtree(folder.parent, ignore_errors=True)

    def close(self) -> None:
        if self._own and self._root is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._root)
            self._root = None
