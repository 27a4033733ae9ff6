"""Answers kept for inputs seen before (Triton's response cache), for the models whose
configuration asks for it: a request whose inputs match an earlier one's, byte for byte, is
answered with that one's outputs, without queueing or running the model.

One cache per worker process, shared by its models, bounded by `response_cache_bytes` (the
inputs' and outputs' bytes and an allowance per entry and per array for what Python holds
beside them), least recently used out first. Each loaded version has a part of its own
(`part`): a version loaded again from a changed file never answers from what the one before
it kept, and an unloaded one's part is emptied.

A request is known by its inputs themselves (names, types, shapes and bytes, in one tuple),
not by a digest of them: a match is exact, so no two inputs can ever share an
answer, and it is cheaper on the event loop. Python hashes the bytes once (SipHash, keyed per
process), 0.8 µs for a Fashion-MNIST image against 4.3 for BLAKE2b, whose hashlib also lets
go of the GIL for 2 KB or more, which on the loop handed the GIL to the inference thread and
waited for it back on every request (docs/benchmarks.md, "Triton's metrics, pages of other
origins, the response cache, warm-up samples"). The price is memory: an entry holds its
inputs, counted in its size.

Inputs or outputs of Python objects (BYTES tensors) are not cached: their bytes are not in
one buffer to compare or count. What is kept is a compact, read-only copy of the outputs,
never a view into the batch they came from (which would keep the whole batch alive, uncounted).
"""

from __future__ import annotations

import itertools
from array import array as machine_array
from collections import OrderedDict

import numpy as np

ENTRY_OVERHEAD_BYTES = 640
ARRAY_OVERHEAD_BYTES = 128
"""Counted per entry beside its inputs' and outputs' bytes, and per output array: what Python
holds for the key, the entry and each array's header (tracemalloc, a Fashion-MNIST image's
inputs: 3,919 bytes for an entry of one 10-float output, 4,286 for four; counted 3,944 and
4,448)."""

Key = tuple[object, ...]
"""(the loaded version's part, then each input's name, type, shape and bytes)."""


MOST_SEEN_SLOTS = 1 << 16
"""Inputs remembered, by hash, as seen once: a slot (8 bytes) per 64 bytes of the cache, a
power of two from 1,024 to this (512 KB), beside what the cache holds."""


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[Key, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self._parts = itertools.count()
        self.seen_slots = min(MOST_SEEN_SLOTS, 1 << max(10, (capacity_bytes // 64).bit_length() - 1))
        self._seen = machine_array("q", bytes(8 * self.seen_slots))  # 64-bit hashes, unboxed

    def __len__(self) -> int:
        return len(self._entries)

    def part(self) -> CachePart:
        """A part for one loaded model version."""
        return CachePart(self, next(self._parts))

    def get(self, key: Key) -> dict[str, np.ndarray] | None:
        """The outputs kept for `key` (a dict of its own: the arrays are shared, read-only)."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return dict(found[0])

    def put(self, key: Key, outputs: dict[str, np.ndarray]) -> None:
        """Keep `outputs` for `key` if its inputs were seen before, making room by dropping
        the least recently used; outputs larger than the whole cache, or of Python objects,
        are not kept."""
        if not self._seen_before(key):
            return
        size = ENTRY_OVERHEAD_BYTES + sum(len(part) for part in key if isinstance(part, bytes))
        kept = {}
        for name, array in outputs.items():
            if array.dtype.hasobject:
                return
            copy = array.copy()  # C order, apart from the batch it may be a view of
            copy.flags.writeable = False  # shared by every request it answers
            kept[name] = copy
            size += ARRAY_OVERHEAD_BYTES + copy.nbytes
        if size > self.capacity_bytes:
            return
        self._remove(key)
        while self._entries and self.used_bytes + size > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[key] = (kept, size)
        self.used_bytes += size

    def _seen_before(self, key: Key) -> bool:
        """Whether these inputs came before (since their slot was last taken by others), and
        they are remembered now: an answer is kept the second time its inputs come. Keeping
        one costs the event loop a copy, an insertion and an eviction, which a cache that
        kept every miss paid for inputs that never came again (a fifth of the loop's rate at
        c64 where none did); one remembered costs a slot (docs/benchmarks.md, "The response
        cache, as shipped")."""
        digest = hash(key)
        slot = digest & (self.seen_slots - 1)
        if self._seen[slot] == digest:
            return True
        self._seen[slot] = digest
        return False

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
        key: list[object] = [self.number]
        for name in sorted(inputs):
            array = inputs[name]
            if array.dtype.hasobject:
                return None
            # row-major bytes whatever the array's layout; dtype and shape tell equal bytes apart
            key += (name, array.dtype.str, array.shape, array.tobytes())
        return tuple(key)

    def get(self, key: Key) -> dict[str, np.ndarray] | None:
        return self.cache.get(key)

    def put(self, key: Key, outputs: dict[str, np.ndarray]) -> None:
        self.cache.put(key, outputs)

    def clear(self) -> None:
        """Forget this version's answers (it is unloaded)."""
        self.cache.clear(self.number)
