"""Triton's system shared memory (app/protocol/shared_memory.py): regions registered,
checked, read, written and shared by the workers of one server, against real objects in a
folder as shm_open makes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.errors import InvalidInput, PayloadTooLarge
from app.protocol import shared_memory
from app.protocol.binary import strings_to_bytes
from app.protocol.shared_memory import Place, RegionNotFound, SharedMemoryRegions, named_place

MAX_BYTES = 1 << 20


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    folder = tmp_path / "shm"
    folder.mkdir()
    return folder


@pytest.fixture
def make_object(objects: Path) -> Callable[[bytes], str]:
    """A shared-memory object holding `data`: its key, as a client gives it."""
    def make(data: bytes) -> str:
        name = f"ortserve-test-{uuid.uuid4().hex[:8]}"
        (objects / name).write_bytes(data)
        return "/" + name

    return make


def regions_in(objects: Path, folder: Path | None = None) -> SharedMemoryRegions:
    return SharedMemoryRegions(MAX_BYTES, folder, objects)


def test_registered_regions_are_listed_and_unregistered(objects: Path, make_object: Callable[[bytes], str]) -> None:
    regions = regions_in(objects)
    first, second = make_object(bytes(64)), make_object(bytes(128))
    regions.register("in", first, 16, 32)
    regions.register("out", second, 0, 128)
    assert regions.status() == [{"name": "in", "key": first, "offset": 16, "byte_size": 32},
                                {"name": "out", "key": second, "offset": 0, "byte_size": 128}]
    assert regions.status("out") == [{"name": "out", "key": second, "offset": 0, "byte_size": 128}]
    regions.unregister("in")
    regions.unregister("never registered")  # no error, as Triton's
    assert [r["name"] for r in regions.status()] == ["out"]
    with pytest.raises(RegionNotFound, match="no shared memory region 'in' is registered"):
        regions.status("in")
    regions.unregister()
    assert regions.status() == []


@pytest.mark.parametrize(("key", "why"), [
    ("/../etc/passwd", "not a POSIX shared-memory name"),
    ("a/b", "not a POSIX shared-memory name"),
    ("/", "not a POSIX shared-memory name"),
    ("/..", "not a POSIX shared-memory name"),
    ("/" + "x" * 300, "not a POSIX shared-memory name"),
    ("/ortserve-no-such-object", "cannot be opened"),
    ("/sem.mp-1234", "names a POSIX semaphore"),
])
def test_a_key_that_names_no_object_of_the_folder_is_refused(objects: Path, key: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        regions_in(objects).register("r", key, 0, 4)


def test_a_link_or_a_folder_is_not_an_object(objects: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"not the client's" * 4)
    (objects / "link").symlink_to(outside)
    (objects / "folder").mkdir()
    regions = regions_in(objects)
    with pytest.raises(InvalidInput, match="cannot be opened"):  # never followed out of the folder
        regions.register("r", "/link", 0, 4)
    with pytest.raises(InvalidInput, match="cannot be opened|is not a shared-memory object"):
        regions.register("r", "/folder", 0, 4)


def test_a_region_must_fit_its_object_and_a_name_is_taken_once(objects: Path,
                                                                make_object: Callable[[bytes], str]) -> None:
    regions, key = regions_in(objects), make_object(bytes(64))
    with pytest.raises(InvalidInput, match="run past the end of key"):
        regions.register("r", key, 32, 33)
    with pytest.raises(InvalidInput, match="offset must be a whole number"):
        regions.register("r", key, -1, 4)
    with pytest.raises(InvalidInput, match="1 to 255 printable characters"):
        regions.register("bad\nname", key, 0, 4)
    regions.register("r", key, 32, 32)
    with pytest.raises(InvalidInput, match="'r' is already registered"):
        regions.register("r", key, 0, 4)
    assert regions.status("r")[0]["offset"] == 32  # the first registration stands


def test_regions_are_bounded(objects: Path, make_object: Callable[[bytes], str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_memory, "MAX_REGIONS", 2)
    regions, key = regions_in(objects), make_object(bytes(8))
    regions.register("a", key, 0, 8)
    regions.register("b", key, 0, 8)
    with pytest.raises(InvalidInput, match="2 shared memory regions are registered"):
        regions.register("c", key, 0, 8)
    regions.unregister("a")
    regions.register("c", key, 0, 8)


def test_an_input_is_read_from_its_place_and_copied_out(objects: Path, make_object: Callable[[bytes], str]) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    key = make_object(b"\xff" * 8 + values.tobytes() + b"\xff" * 8)
    regions = regions_in(objects)
    regions.register("r", key, 8, values.nbytes + 8)
    read = regions.read_input(Place("r", 0, values.nbytes), "x", np.dtype(np.float32), [3, 4])
    np.testing.assert_array_equal(read, values)
    (objects / key[1:]).write_bytes(bytes(values.nbytes + 16))  # the client reuses its region
    np.testing.assert_array_equal(read, values)  # the request's copy holds
    with pytest.raises(InvalidInput, match="shared_memory_byte_size is 40 bytes but shape \\[3, 4\\] of float32 "
                                           "needs 48"):
        regions.read_input(Place("r", 0, 40), "x", np.dtype(np.float32), [3, 4])
    with pytest.raises(InvalidInput, match="run past the end of region 'r'"):
        regions.read_input(Place("r", 16, values.nbytes), "x", np.dtype(np.float32), [3, 4])
    with pytest.raises(InvalidInput, match="no shared memory region 'other' is registered"):
        regions.read_input(Place("other", 0, 4), "x", np.dtype(np.float32), [1])


def test_strings_are_read_as_triton_writes_them(objects: Path, make_object: Callable[[bytes], str]) -> None:
    data = strings_to_bytes(np.array(["ça", "", "marche"], dtype=object))
    regions = regions_in(objects)
    regions.register("r", make_object(data), 0, len(data))
    read = regions.read_input(Place("r", 0, len(data)), "text", np.dtype(object), [3])
    assert read.tolist() == ["ça", "", "marche"]


def test_a_tensor_is_bounded_as_a_body_is(objects: Path, make_object: Callable[[bytes], str]) -> None:
    regions = SharedMemoryRegions(16, None, objects)
    regions.register("r", make_object(bytes(64)), 0, 64)
    with pytest.raises(PayloadTooLarge, match="over the 16 bytes"):
        regions.read_input(Place("r", 0, 64), "x", np.dtype(np.uint8), [64])


def test_an_object_shrunk_after_registering_is_an_error_not_a_crash(objects: Path,
                                                                    make_object: Callable[[bytes], str]) -> None:
    """A mapped read past a shrunk object's end would kill the worker (SIGBUS); pread says so."""
    key = make_object(bytes(64))
    regions = regions_in(objects)
    regions.register("r", key, 0, 64)
    os.truncate(objects / key[1:], 8)
    with pytest.raises(InvalidInput, match="gave 8 of 64 bytes"):
        regions.read_input(Place("r", 0, 64), "x", np.dtype(np.uint8), [64])
    with pytest.raises(InvalidInput, match="holds 8 bytes now"):
        regions.write_output(Place("r", 0, 64), "y", bytes(64))
    assert (objects / key[1:]).stat().st_size == 8  # never grown by the server


def test_an_output_is_written_at_its_place_if_it_fits(objects: Path, make_object: Callable[[bytes], str]) -> None:
    key = make_object(bytes(32))
    regions = regions_in(objects)
    regions.register("r", key, 8, 24)
    regions.check_output(Place("r", 4, 8), "y")
    regions.write_output(Place("r", 4, 8), "y", b"\x01\x02\x03")
    assert (objects / key[1:]).read_bytes() == bytes(12) + b"\x01\x02\x03" + bytes(17)
    with pytest.raises(InvalidInput, match="output 'y' takes 9 bytes, more than its shared_memory_byte_size 8"):
        regions.write_output(Place("r", 4, 8), "y", bytes(9))
    with pytest.raises(InvalidInput, match="run past the end of region 'r'"):
        regions.check_output(Place("r", 20, 8), "y")


def test_every_worker_sees_the_regions_any_worker_registered(objects: Path, tmp_path: Path,
                                                             make_object: Callable[[bytes], str]) -> None:
    """Two workers' regions over one control folder: a registration, a replacement under the
    same name and an unregistration made through one hold in the other at its next use."""
    control = tmp_path / "control"
    control.mkdir()
    one, other = regions_in(objects, control), regions_in(objects, control)
    first, second = make_object(b"\x01" * 4), make_object(b"\x02" * 4)
    one.register("r", first, 0, 4)
    assert other.read_input(Place("r", 0, 4), "x", np.dtype(np.uint8), [4]).tolist() == [1] * 4
    other.unregister("r")
    with pytest.raises(InvalidInput, match="no shared memory region 'r' is registered"):
        one.read_input(Place("r", 0, 4), "x", np.dtype(np.uint8), [4])
    one.register("r", second, 0, 4)  # the name again, another object: the other worker opens it anew
    assert other.read_input(Place("r", 0, 4), "x", np.dtype(np.uint8), [4]).tolist() == [2] * 4
    with pytest.raises(InvalidInput, match="already registered"):
        other.register("r", first, 0, 4)
    assert other.status() == one.status() == [{"name": "r", "key": second, "offset": 0, "byte_size": 4}]


@pytest.mark.parametrize(("parameters", "why"), [
    ({"shared_memory_region": "r"}, "needs shared_memory_byte_size"),
    ({"shared_memory_byte_size": 4}, "go with shared_memory_region, which is missing"),
    ({"shared_memory_region": "", "shared_memory_byte_size": 4}, "must be a registered region's name"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "must be a whole number of bytes"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": -4},
     "shared_memory_offset must be a whole number"),
])
def test_a_tensors_place_is_named_as_triton_names_it(parameters: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        named_place(parameters, "input", "x")


def test_a_place_defaults_to_the_regions_start() -> None:
    assert named_place({"shared_memory_region": "r", "shared_memory_byte_size": 4}, "input", "x") == Place("r", 0, 4)
    assert named_place({"binary_data_size": 4}, "input", "x") is None
