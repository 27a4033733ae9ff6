"""What is on disk: the model folders under the model directory and each one's version
folders, read in worker threads (never on the event loop), with what a load needs.

A model is a folder `<model_dir>/<name>/` of version folders `<version>/`; a folder whose
name no client could ask for is left out, and a link that leaves its folder is refused.
Where there are several model directories (Triton's repeated --model-repository), a name
must be in only one of them: one found in two is served from neither, as Triton does, since
nothing says which is meant.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from app.errors import InvalidInput
from app.loading import has_manifest, holds_a_model, manifest_fingerprint
from app.manifest import MAX_VERSION_DIGITS, ManifestError, VersionPolicy, load_manifest
from app.model_facts import FactsError, read_facts
from app.repository.errors import LoadFailed, RepositoryUnreadable
from app.repository.names import check_name

logger = logging.getLogger(__name__)
T = TypeVar("T")

Signature = tuple[tuple[str, int, int], ...]
"""Every file of a model's folder with its size and modification time: a change means a reload."""


@dataclass
class FolderScan:
    """One model's folder as read from disk."""

    signature: Signature
    folders: dict[int, Path]
    refused: dict[int, str]
    """Version folders that are not served, with why (a duplicate number, a link out)."""
    policy: VersionPolicy
    """The newest readable version's policy (manifest or configuration), else the server's."""
    fingerprints: dict[int, str]


class ModelFolders:
    def __init__(self, roots: list[Path], default_policy: VersionPolicy) -> None:
        self.roots = roots
        self.default_policy = default_policy
        self.found: set[str] = set()  # model folders found by the last listing
        self._listed: dict[Path, set[str]] = {}  # each root's folders at the last listing
        self._misnamed: set[str] = set()  # folders whose name no model can have, warned about once
        self.misplaced: dict[Path, str] = {}  # model directories that are a model's folder or a version's, with why

    @property
    def where(self) -> str:
        """The model directories, as a message names them."""
        return ", ".join(map(str, self.roots))

    async def names(self) -> list[str]:
        """The model folders' names, sorted; a logged 503 when a model directory cannot be read."""
        try:
            listed = await asyncio.to_thread(lambda: {root: self._names(root) for root in self.roots})
        except OSError as e:
            logger.error("the model folder cannot be read: %s", e)
            raise RepositoryUnreadable(f"the model folder cannot be read: {e.strerror or e}") from e
        self._listed = {root: set(names) for root, names in listed.items()}
        self.found = set().union(*self._listed.values())
        return sorted(self.found)

    async def scan(self, name: str, folder: Path | None = None) -> FolderScan:
        """Everything a load reads from the model's folder before loading; `folder`: a model
        folder of the server's own instead of the model directory's (an upload)."""
        return await self._off_loop(lambda n: self._scan(n, folder), name)

    async def versions(self, name: str) -> tuple[dict[int, Path], dict[int, str]]:
        """The model's version folders by number, and those refused with why."""
        return await self._off_loop(lambda n: self._version_folders(n, self._holders(n)), name)

    async def signature(self, name: str) -> Signature:
        return await self._off_loop(lambda n: _signature(self._holders(n)), name)

    # --- in a worker thread ------------------------------------------------------------

    def _names(self, root: Path) -> list[str]:
        if not root.is_dir():
            raise FileNotFoundError(f"model directory {root} does not exist")
        names, versions = [], []
        for path in root.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            if _is_version(path) and holds_a_model(path):
                versions.append(path.name)  # a version folder: no model folder holds a model's files
                continue
            try:
                check_name(path.name)
            except InvalidInput as e:
                if path.name not in self._misnamed:
                    self._misnamed.add(path.name)
                    logger.warning("model folder %s is not served: %s", path, e.message)
                continue
            names.append(path.name)
        self._note_misplaced(root, sorted(versions, key=int), bool(names))
        return sorted(names)

    def _note_misplaced(self, root: Path, versions: list[str], models: bool) -> None:
        """A model directory given as a model's folder (`--model-dir models/fashion-cnn`) or a
        version's, a new user's likely slip, or a version folder one level too high: said once,
        with where to point instead."""
        if versions and models:
            why = (f"{root}: folders {', '.join(versions)} hold a model's files, as version folders do, beside "
                   "the model folders; they are not served (a version folder belongs in its model's folder)")
        elif versions:
            why = (f"{root} holds version folders ({', '.join(versions)}), so it is a model's "
                   f"folder, not a model directory: point --model-dir at the folder that holds it ({root.parent})")
        elif holds_a_model(root):
            why = (f"{root} holds a model's files, so it is a model version's folder, not a model directory: "
                   f"point --model-dir at the folder two levels up ({root.parent.parent})")
        else:
            self.misplaced.pop(root, None)
            return
        if self.misplaced.get(root) != why:
            logger.error("%s", why)
        self.misplaced[root] = why

    def _scan(self, name: str, folder: Path | None = None) -> FolderScan:
        # an upload's folder, or the model directories' (read once: each is a listing of them all)
        holders = [folder] if folder is not None else self._holders(name)
        folders, refused = self._version_folders(name, holders)
        return FolderScan(_signature(holders), folders, refused, self._newest_policy(folders),
                          {number: manifest_fingerprint(path) for number, path in folders.items()})

    async def _off_loop(self, read: Callable[[str], T], name: str) -> T:
        """`read(name)` of one model's folder in a worker thread; OSError a logged 503."""
        try:
            return await asyncio.to_thread(read, name)
        except OSError as e:
            logger.error("model %s: its folder cannot be read: %s", name, e)
            raise RepositoryUnreadable(f"model {name!r}: its folder cannot be read: {e.strerror or e}") from e

    def _holders(self, name: str) -> list[Path]:
        """The model's folders, one per model directory that has a folder of exactly this name."""
        return [root / name for root in self.roots if (root / name).is_dir() and self._named_exactly(root, name)]

    def _named_exactly(self, root: Path, name: str) -> bool:
        """Whether the model directory lists a folder of exactly this name: where the file
        system ignores case (macOS, Windows shares), `Fashion-CNN` opens `fashion-cnn/`,
        which would then be served under a second name."""
        return name in self._listed.get(root, ()) or name in {entry.name for entry in root.iterdir()}

    def _version_folders(self, name: str, holders: list[Path]) -> tuple[dict[int, Path], dict[int, str]]:
        """The version folders of the model's one folder among `holders` (`_holders`); 400 where
        it is a link that leaves the model directory, or for a name with no version folders in
        two model directories."""
        found: dict[int, Path] = {}
        refused: dict[int, str] = {}
        if len(holders) > 1:  # every version refused, with why: the index and a load say it
            why = (f"model {name!r} is in more than one model directory ({', '.join(map(str, holders))}): "
                   "served from none until it is in one only")
            numbers = {int(path.name) for holder in holders for path in holder.iterdir() if _is_version(path)}
            if not numbers:
                raise LoadFailed(why)
            return {}, dict.fromkeys(sorted(numbers), why)
        if not holders:
            return found, refused
        folder = holders[0]
        inside = folder.resolve()
        if folder.is_symlink() and not inside.is_relative_to(folder.parent.resolve()):
            raise LoadFailed(f"model {name!r}: its folder is a link that leaves the model directory; "
                             "it is not served")
        for path in sorted(folder.iterdir()):
            if not _is_version(path):
                continue
            number = int(path.name)
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                refused[number] = "a link that leaves the model's folder"
                continue
            if number in found:  # "01" and "1" are one version: serve neither
                refused[number] = f"duplicate: folders {found[number].name!r} and {path.name!r} are both version {number}"
                continue
            found[number] = path
        for number in refused:
            found.pop(number, None)
        return found, refused

    def _newest_policy(self, folders: dict[int, Path]) -> VersionPolicy:
        """The newest readable version's policy: its manifest's, else its configuration's
        (config.json, config.pbtxt), else the server's."""
        for number in sorted(folders, reverse=True):
            try:
                if has_manifest(folders[number]):
                    policy = load_manifest(folders[number], verify_files=False).version_policy
                else:
                    policy = read_facts(folders[number]).version_policy
            except (ManifestError, FactsError):
                continue
            return policy or self.default_policy
        return self.default_policy


def _signature(holders: list[Path]) -> Signature:
    """Every file in the model's folders (`_holders`): a second one appearing or going is a change."""
    entries: list[tuple[str, int, int]] = []
    for folder in holders:
        for path in sorted(folder.rglob("*")):
            try:
                info = path.stat()
            except OSError:  # removed while scanning: the next scan sees it gone
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((str(path), info.st_size, info.st_mtime_ns))
    return tuple(entries)


def _is_version(path: Path) -> bool:
    """A version folder: digits only, no more than a client can name (parse_version)."""
    return (path.is_dir() and path.name.isascii() and path.name.isdigit()
            and len(path.name) <= MAX_VERSION_DIGITS)
