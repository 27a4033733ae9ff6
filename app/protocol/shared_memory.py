"""Triton's system shared-memory extension: a client on the same host registers a region of
a POSIX shared-memory object (its key, an offset and a size: tritonclient's
`register_system_shared_memory`, perf_analyzer's `--shared-memory system`), then names the
region in a tensor's parameters instead of sending the tensor; the server reads an input
from it and writes an output into it.

Off unless the server starts with `--shared-memory` (Triton's `--allow-client-shm`): with it,
any caller allowed to infer may read and write any shared-memory object this server's user
can open, so it is for clients on the same host and trusted as much as the server's user.

The objects are read and written with pread and pwrite on their descriptors, never mapped:
a client that shrinks its object after registering it would make a read of a mapping kill
the worker (SIGBUS); a short read is an error instead. Inputs are copied out when the request
is decoded, so the client may reuse its region as soon as the answer comes, and nothing of
the server holds the object's memory.

With several workers the regions are a ledger in the control folder (`SHM_LEDGER`), written
under a lock and replaced in one rename; each worker reads it again whenever it changed
(one stat per request that names a region), so a region registered through one worker is
usable through every other once the call returns, and an unregistered one through none.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge
from app.processes import SHM_LEDGER, SHM_LOCK, file_stamp, write_atomically
from app.protocol.binary import BinaryReader

MAX_REGIONS = 256
"""Regions registered at once, in all: each holds a file descriptor open in every worker that used it."""
MAX_NAME_CHARS = 255
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
"""The tensor parameters that name a region (Triton's, for inputs and requested outputs alike)."""


def served(regions: SharedMemoryRegions | None) -> SharedMemoryRegions:
    """The regions, for the extension's calls over either transport; Forbidden (403,
    PERMISSION_DENIED) while the server does not allow them."""
    if regions is None:
        raise Forbidden("Triton's system shared-memory extension is off in this server: start it with "
                        "--shared-memory (for clients on the same host) to register regions")
    return regions


class RegionNotFound(NotFound):
    """A status call for a region nobody registered (Triton's NOT_FOUND)."""


@dataclass(frozen=True)
class RegionSpec:
    """A registration, as the status calls answer it (Triton's fields)."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class Place:
    """Where a tensor's bytes lie: `byte_size` bytes from `offset` into a registered region."""

    region: str
    offset: int
    byte_size: int


class OpenRegion:
    """A registered region with its object's descriptor, closed when the last holder lets go
    (a request decoded on a thread may still read it after an unregister)."""

    def __init__(self, spec: RegionSpec, objects: Path) -> None:
        self.spec = spec
        self.fd = _open_object(spec, objects)

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, place: Place, name: str) -> bytearray:
        buffer = bytearray(place.byte_size)
        got = os.preadv(self.fd, [buffer], self.spec.offset + place.offset) if buffer else 0
        if got != place.byte_size:
            raise InvalidInput(f"input {name!r}: shared memory region {place.region!r} gave {got} of {place.byte_size} "
                               "bytes (its object is smaller than when it was registered)")
        return buffer

    def write(self, place: Place, data: bytes, name: str) -> None:
        size = os.fstat(self.fd).st_size
        start = self.spec.offset + place.offset
        if start + len(data) > size:  # pwrite would grow the object: the client's mapping ends before
            raise InvalidInput(f"output {name!r}: shared memory region {place.region!r}'s object holds {size} bytes now, "
                               f"less than the {start + len(data)} this output ends at")
        os.pwrite(self.fd, data, start)


def _object_path(key: str, objects: Path) -> Path:
    """The object a key names, as shm_open(3) finds it: one leading slash, then a file name
    in `objects` (on Linux, /dev/shm)."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"shared memory key {key[:300]!r} is not a POSIX shared-memory name: '/' and a file name "
                           f"of 1 to {MAX_NAME_CHARS} characters without '/', as shm_open takes")
    if name.startswith("sem."):  # sem_open's: the worker processes' own semaphores among them
        raise InvalidInput(f"shared memory key {key[:300]!r} names a POSIX semaphore (sem.*), not a shared-memory "
                           "object")
    return objects / name


def _open_object(spec: RegionSpec, objects: Path) -> int:
    """The object's descriptor, checked to hold the region (a regular file, large enough)."""
    path = _object_path(spec.key, objects)
    try:  # never a link out of the folder; non-blocking: a FIFO left there would otherwise hang
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise InvalidInput(f"shared memory region {spec.name!r}: key {spec.key!r} cannot be opened "
                           f"({e.strerror}); create it (shm_open) before registering it") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise InvalidInput(f"shared memory region {spec.name!r}: key {spec.key!r} is not a shared-memory object")
        if spec.offset + spec.byte_size > found.st_size:
            raise InvalidInput(f"shared memory region {spec.name!r}: offset {spec.offset} and byte_size "
                               f"{spec.byte_size} run past the end of key {spec.key!r} ({found.st_size} bytes)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _whole_number(value: object, what: str) -> int:
    if type(value) is not int or value < 0:  # not a bool: True is no size
        raise InvalidInput(f"{what} must be a whole number of bytes, 0 or more; got {value!r}")
    return value


def named_place(parameters: dict[str, Any] | None, kind: str, name: str) -> Place | None:
    """The region the parameters of a tensor (`kind` input or output, `name`) name; None:
    none. Triton's rules: the region's name and byte size are both needed, the offset is 0
    unless given. (Messages are made only for a mistake: this is every such request's path.)"""
    if not parameters or REGION not in parameters:
        if parameters and (BYTE_SIZE in parameters or OFFSET in parameters):
            raise InvalidInput(f"{kind} {name!r}: {BYTE_SIZE} and {OFFSET} go with {REGION}, which is missing")
        return None
    region = parameters[REGION]
    if type(region) is not str or not region:
        raise InvalidInput(f"{kind} {name!r}: {REGION} must be a registered region's name, got {region!r}")
    if BYTE_SIZE not in parameters:
        raise InvalidInput(f"{kind} {name!r}: {REGION} {region!r} needs {BYTE_SIZE}, the tensor's bytes in the "
                           "region")
    offset, size = parameters.get(OFFSET, 0), parameters[BYTE_SIZE]
    if type(offset) is not int or offset < 0:
        _whole_number(offset, f"{kind} {name!r}: {OFFSET}")
    if type(size) is not int or size < 0:
        _whole_number(size, f"{kind} {name!r}: {BYTE_SIZE}")
    return Place(region, offset, size)


class SharedMemoryRegions:
    """The registered regions of this server (every worker's, with a control folder)."""

    def __init__(self, max_tensor_bytes: int, folder: Path | None = None, objects: Path = Path("/dev/shm"),
                 heavy_bytes: int = 256 * 1024) -> None:
        self.max_tensor_bytes = max_tensor_bytes  # a tensor read from a region, at most (a body's bound)
        self.heavy_bytes = heavy_bytes  # read off the event loop from this many bytes (app/offload.py's bodies')
        self.objects = objects  # where the keys' objects are (shared_memory_dir)
        self._open: dict[str, OpenRegion] = {}
        self._ledger = folder / SHM_LEDGER if folder is not None else None
        self._seen: tuple[int, int, int] | None = None
        self._specs: dict[str, RegionSpec] = {}

    # --- the extension's calls ----------------------------------------------------------

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Triton's status: every region, or the one named (RegionNotFound if none is)."""
        specs = self._follow()
        if not name:
            return [asdict(spec) for spec in specs.values()]
        if name not in specs:
            raise RegionNotFound(f"no shared memory region {name[:300]!r} is registered")
        return [asdict(specs[name])]

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """A new region, checked by opening its object here; InvalidInput for a name taken,
        a key that does not open, or a region that does not fit its object."""
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidInput(f"a shared memory region's name is 1 to {MAX_NAME_CHARS} printable characters, "
                               f"got {name[:300]!r}")
        spec = RegionSpec(name, key, _whole_number(offset, "offset"), _whole_number(byte_size, "byte_size"))
        opened = OpenRegion(spec, self.objects)

        def add(specs: dict[str, RegionSpec]) -> None:
            if name in specs:
                raise InvalidInput(f"shared memory region {name!r} is already registered (key {specs[name].key!r}); "
                                   "unregister it first")
            if len(specs) >= MAX_REGIONS:
                raise InvalidInput(f"{MAX_REGIONS} shared memory regions are registered, the most this server "
                                   "holds; unregister some first")
            specs[name] = spec

        self._change(add)
        self._open[name] = opened

    def unregister(self, name: str = "") -> None:
        """One region, or every region where no name is given; a name not registered is no
        error (as Triton's)."""
        def remove(specs: dict[str, RegionSpec]) -> None:
            if name:
                specs.pop(name, None)
            else:
                specs.clear()

        self._change(remove)

    # --- tensors ---------------------------------------------------------------------------

    def heavy(self, parameters: list[dict[str, Any] | None]) -> bool:
        """Whether the inputs with these parameters read as many bytes from their regions as a
        body that is decoded off the event loop holds."""
        sizes = [p.get(BYTE_SIZE) for p in parameters if p and REGION in p]
        return sum(size for size in sizes if type(size) is int) > self.heavy_bytes

    def read_input(self, place: Place, name: str, dtype: np.dtype, shape: list[int]) -> np.ndarray:
        """An input's tensor from its region, checked as a binary input's is (its byte size
        against its shape and type; BYTES as Triton writes them), copied out."""
        if place.byte_size > self.max_tensor_bytes:  # copied out: memory a body that large would take
            raise PayloadTooLarge(f"input {name!r}: {BYTE_SIZE} {place.byte_size} is over the {self.max_tensor_bytes} bytes "
                                  "a tensor in shared memory may take (max_body_bytes, as a body's)")
        region = self._region(place, "input", name)
        if dtype.kind != "O":  # checked before anything is read: the size the shape needs
            needed = math.prod(shape) * dtype.itemsize
            if place.byte_size != needed:
                raise InvalidInput(f"input {name!r}: {BYTE_SIZE} is {place.byte_size} bytes but shape {shape} of "
                                   f"{dtype.name} needs {needed}")
        data = memoryview(region.read(place, name))
        reader = BinaryReader(data)
        if dtype.kind == "O":
            return reader.read_strings(name, place.byte_size, shape)
        return reader.read(name, place.byte_size, dtype, shape)

    def check_output(self, place: Place, name: str) -> None:
        """Before the model runs: the output's region is registered and holds its place."""
        self._region(place, "output", name)

    def write_output(self, place: Place, name: str, data: bytes) -> None:
        if len(data) > place.byte_size:
            raise InvalidInput(f"output {name!r} takes {len(data)} bytes, more than its {BYTE_SIZE} {place.byte_size}")
        self._region(place, "output", name).write(place, data, name)

    # --- the ledger ------------------------------------------------------------------------

    def _region(self, place: Place, kind: str, name: str) -> OpenRegion:
        spec = self._follow().get(place.region)
        if spec is None:
            raise InvalidInput(f"{kind} {name!r}: no shared memory region {place.region[:300]!r} is registered")
        if place.offset + place.byte_size > spec.byte_size:
            raise InvalidInput(f"{kind} {name!r}: {OFFSET} {place.offset} and {BYTE_SIZE} {place.byte_size} run past the "
                               f"end of region {place.region!r} ({spec.byte_size} bytes)")
        opened = self._open.get(place.region)
        if opened is None or opened.spec != spec:  # registered through another worker, or again
            opened = self._open[place.region] = OpenRegion(spec, self.objects)
        return opened

    def _follow(self) -> dict[str, RegionSpec]:
        """The regions as the ledger has them now (read again only when it changed)."""
        if self._ledger is not None:
            stamp = file_stamp(self._ledger)
            if stamp != self._seen:
                self._seen = stamp
                self._specs = _read_ledger(self._ledger) if stamp is not None else {}
                self._let_go()
        return self._specs

    def _let_go(self) -> None:
        """The descriptors of regions unregistered, or registered again otherwise, let go."""
        for name in [n for n, opened in self._open.items() if self._specs.get(n) != opened.spec]:
            del self._open[name]

    def _change(self, change: Any) -> None:
        """`change` made to the regions, and with a control folder to the ledger, under its
        lock on top of the latest (two workers' registrations at once both hold)."""
        if self._ledger is None:
            specs = dict(self._specs)
            change(specs)
            self._specs = specs
        else:
            with self._ledger.with_name(SHM_LOCK).open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._seen = None
                specs = dict(self._follow())
                change(specs)
                write_atomically(self._ledger, json.dumps([asdict(spec) for spec in specs.values()]))
                self._specs, self._seen = specs, file_stamp(self._ledger)
        self._let_go()


def _read_ledger(path: Path) -> dict[str, RegionSpec]:
    try:
        return {entry["name"]: RegionSpec(**entry) for entry in json.loads(path.read_text())}
    except FileNotFoundError:
        return {}
