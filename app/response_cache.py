"""Answers kept for inputs seen before (Triton's response cache), for the models whose
configuration asks for it: a request whose inputs match an earlier one's, byte for byte, is
answered with that one's outputs, without queueing or running the model.

One cache per worker process, shared by its models, bounded by `response_cache_bytes` (the
outputs' bytes and a fixed allowance per entry), least recently used out first. Each loaded
version has a part of its own (`part`): a version loaded again from a changed file never
answers from what the one before it kept, and an unloaded one's part is emptied. Within it a
request is known by a digest of its inputs (names, types, shapes, bytes); BLAKE2b of 128
bits, so two different inputs never meet in practice. Inputs or outputs of Python
objects (BYTES tensors) are not cached: their bytes are not in one buffer to digest or count.
What is kept is a compact, read-only copy, never a view into the batch the outputs came from
(which would keep the whole batch alive, uncounted).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict

import numpy as np

ENTRY_OVERHEAD_BYTES = 512
ARRAY_OVERHEAD_BYTES = 128
"""Counted per entry beside its outputs' bytes, and per output array: what Python holds for
the key, the entry and each array's header (tracemalloc: 655 bytes for an entry of one
10-float output, 1,156 for four; counted 680 and 1,184)."""

_HELD_BYTES = 2047
"""hashlib lets go of the GIL to digest 2,048 bytes or more at once (CPython's
HASHLIB_GIL_MINSIZE). On the event loop that hands the GIL to a waiting inference thread and
then waits to take it back, once per request: a cache that never hit cost a third of the
loop's rate at c64 so (docs/benchmarks.md, "The response cache"). Digested in smaller pieces,
the loop keeps it."""

Key = tuple[int, bytes]
"""(the loaded version's part, digest of the inputs)."""


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[Key, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self._parts = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def part(self) -> CachePart:
        """A part for one loaded model version."""
        return CachePart(self, next(self._parts))

    def get(self, key: Key) -> dict[str, np.ndarray] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: Key, outputs: dict[str, np.ndarray]) -> None:
        """Keep `outputs` for `key`, making room by dropping the least recently used; outputs
        larger than the whole cache, or of Python objects, are not kept."""
        if any(array.dtype.hasobject for array in outputs.values()):
            return
        size = ENTRY_OVERHEAD_BYTES + sum(ARRAY_OVERHEAD_BYTES + array.nbytes for array in outputs.values())
        if size > self.capacity_bytes:
            return
        kept = {}
        for name, array in outputs.items():
            copy = array.copy()  # C order, apart from the batch it may be a view of
            copy.flags.writeable = False  # shared by every request it answers
            kept[name] = copy
        self._remove(key)
        while self._entries and self.used_bytes + size > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[key] = (kept, size)
        self.used_bytes += size

    def clear(self, part: int) -> None:
        for key in [k for k in self._entries if k[0] == part]:
            self._remove(key)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry[1]


class CachePart:
    """One loaded version's answers in the shared cache."""

    def __init__(self, cache: ResponseCache, number: int) -> None:
        self.cache = cache
        self.number = number

    def key(self, inputs: dict[str, np.ndarray]) -> Key | None:
        """What identifies these inputs; None where they cannot be cached."""
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            array = inputs[name]
            if array.dtype.hasobject:
                return None
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            data = np.ascontiguousarray(array).data.cast("B")
            for start in range(0, len(data), _HELD_BYTES):
                digest.update(data[start:start + _HELD_BYTES])
        return self.number, digest.digest()

    def get(self, key: Key) -> dict[str, np.ndarray] | None:
        return self.cache.get(key)

    def put(self, key: Key, outputs: dict[str, np.ndarray]) -> None:
        self.cache.put(key, outputs)

    def clear(self) -> None:
        """Forget this version's answers (it is unloaded)."""
        self.cache.clear(self.number)
