"""The workers of a server, to one another, for stateful models (app/sequence_peers.py): a step
of a sequence another worker holds is run there. Here two "workers" are two SequencePeers and
two SequenceBooks in one event loop, each with its own socket in one folder, as two processes
have them; the model adds each step's x to the sequence's state. The real thing, two worker
processes behind one port, is in tests/app/test_sequences.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.errors import DeadlineExceeded, InvalidInput, ModelNotReady, QueueFull, ServingError
from app.manifest import SequenceControl, Sequences, SequenceState
from app.sequence_peers import PeerGone, PeerProtocolError, SequencePeers, pack, read_frame, relayed, unpack
from app.sequences import SequenceBook, SequenceFlags, SequenceNotActive, StepTerms

FACTS = Sequences(controls=[SequenceControl(input="START", kind="start", datatype="INT32", false_true=[0, 1])],
                  states=[SequenceState(input="acc_in", output="acc_out", datatype="FP32", shape=[1])])


class Worker:
    """What a worker process holds for one stateful model: its book and its peers."""

    def __init__(self, folder: Path, name: str) -> None:
        self.book = SequenceBook("acc", FACTS, max_state_bytes=1 << 20, answered=frozenset({"total"}))
        self.peers = SequencePeers(folder, 1 << 20, me=name)
        self.book.peers = self.peers
        self.sequences = self.book  # as ServedModel names it, for the peers' lookup
        self.run_s = 0.0  # how long its model takes a step
        self.ran = 0  # steps its model ran

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.ran += 1
        await asyncio.sleep(self.run_s)
        total = inputs["acc_in"] + inputs["x"]
        return {"total": total, "acc_out": total, "started": inputs["START"]}

    async def step_here(self, inputs: dict[str, np.ndarray], flags: SequenceFlags, terms: StepTerms
                        ) -> dict[str, np.ndarray] | None:
        try:  # as ServedModel.step_here does
            return await self.book.run(inputs, flags, self.infer)
        except SequenceNotActive:
            return None

    async def step(self, sequence_id: int | str, x: float, start: bool = False, end: bool = False,
                   timeout_s: float = 30.0) -> dict[str, float]:
        """A client's step sent to this worker."""
        inputs = {"x": np.array([[x]], dtype=np.float32)}
        outputs = await self.book.run(inputs, SequenceFlags(sequence_id, start, end), self.infer,
                                      StepTerms(0, time.monotonic() + timeout_s, timeout_s))
        return {name: float(value.ravel()[0]) for name, value in outputs.items()}


@contextlib.asynccontextmanager
async def workers(folder: Path, count: int = 2) -> AsyncIterator[list[Worker]]:
    started = [Worker(folder, f"w{n}") for n in range(count)]
    for worker in started:
        assert await worker.peers.start(functools.partial(lambda w, name, version: w, worker))
    try:
        yield started
    finally:
        for worker in started:
            await worker.peers.stop()


async def test_a_sequence_started_in_one_worker_steps_through_any(tmp_path: Path) -> None:
    async with workers(tmp_path) as (a, b):
        seen = [await a.step(7, 1.0, start=True)]
        for worker in (b, b, a, b, a):  # the client's connections land where the kernel puts them
            seen.append(await worker.step(7, 1.0))
        seen.append(await b.step(7, 1.0, end=True))
        after_end = b.step(7, 1.0)
        with pytest.raises(SequenceNotActive, match=r"not active \(no worker of the server holds it\)"):
            await after_end
    assert [s["total"] for s in seen] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert [s["started"] for s in seen] == [1, 0, 0, 0, 0, 0, 0]
    assert "acc_out" not in seen[1]  # a state is kept where the sequence lives, not answered
    assert (a.ran, b.ran) == (7, 0)  # every step ran where its state is
    assert a.book.active == b.book.active == 0  # the end, sent to b, ended it in a


async def test_a_start_elsewhere_makes_the_others_forget_the_id(tmp_path: Path) -> None:
    async with workers(tmp_path) as (a, b):
        await a.step("s", 5.0, start=True)
        await a.step("s", 5.0)
        restarted = await b.step("s", 1.0, start=True)  # the client began again; its old sequence was in a
        assert (a.book.active, b.book.active) == (0, 1)  # heard before the start was answered
        following = await a.step("s", 1.0)  # reached a: run in b, on the new sequence's state
    assert (restarted["total"], following["total"]) == (1.0, 2.0)


async def test_the_worker_last_found_holding_a_sequence_is_asked_alone(tmp_path: Path) -> None:
    async with workers(tmp_path, count=3) as (a, b, c):
        await c.step(1, 1.0, start=True)
        await a.step(1, 1.0)  # found by asking b and c
        asked: list[list[str]] = []
        original = a.peers._ask

        async def counted(names: list[str], *args: object) -> object:
            asked.append(list(names))
            return await original(names, *args)  # type: ignore[arg-type]
        a.peers._ask = counted  # type: ignore[method-assign]
        third = await a.step(1, 1.0)
        assert asked == [["w2"]]
        await b.step(1, 1.0, start=True)  # it moved: a asks c first, then the others
        asked.clear()
        fourth = await a.step(1, 1.0)
    assert third["total"] == 3.0
    assert asked == [["w2"], ["w1"]]  # c no longer holds it; then the others: b, which does
    assert fourth["total"] == 2.0


async def test_the_holders_answer_is_not_held_up_by_a_slow_or_vanishing_worker(tmp_path: Path) -> None:
    async with workers(tmp_path, count=3) as (a, b, c):
        await c.step(8, 1.0, start=True)
        stuck = asyncio.Event()

        async def slow(*_: object) -> None:  # b does not hold it, and takes its time to say so
            stuck.set()
            await asyncio.sleep(60)
        b.step_here = slow  # type: ignore[method-assign]
        second = await asyncio.wait_for(a.step(8, 1.0), 5)  # c's answer, without waiting for b's
        assert stuck.is_set()
        b.book.peers = None
        await b.peers.stop()  # b goes away while a's call to it is still out: nothing is lost
        third = await asyncio.wait_for(a.step(8, 1.0), 5)
    assert (second["total"], third["total"]) == (2.0, 3.0)


async def test_a_holders_refusal_reaches_the_client_as_it_was_raised(tmp_path: Path) -> None:
    async with workers(tmp_path) as (a, b):
        await a.step(1, 1.0, start=True)
        await a.step(2, 1.0, start=True)
        a.book.max_state_bytes = 4  # two sequences' states take 8: the next step's is refused, its sequence ended
        with pytest.raises(QueueFull, match="sequence 1's state grew") as refused:
            await b.step(1, 1.0)
    assert refused.value.retry_after_s == 1


async def test_a_holder_that_stops_while_it_runs_a_step_is_a_503_not_a_hang(tmp_path: Path) -> None:
    async with workers(tmp_path) as (a, b):
        await a.step(3, 1.0, start=True)
        a.run_s = 30.0
        step = asyncio.ensure_future(b.step(3, 1.0))
        while a.ran < 2:  # the step runs in a
            await asyncio.sleep(0.01)
        await a.peers.stop()  # the worker exits: its connections close
        with pytest.raises(PeerGone, match="stopped answering while it ran the step"):
            await asyncio.wait_for(step, 10)
    assert isinstance(PeerGone("x"), ModelNotReady)  # a 503: the client may start its sequence again


async def test_a_holder_past_the_deadline_is_a_504(tmp_path: Path) -> None:
    async with workers(tmp_path) as (a, b):
        await a.step(4, 1.0, start=True)
        a.run_s = 5.0
        with pytest.raises(DeadlineExceeded, match="did not answer within"):
            await b.step(4, 1.0, timeout_s=0.2)


async def test_a_worker_gone_without_its_socket_is_passed_over_and_its_socket_removed(tmp_path: Path) -> None:
    stale = tmp_path / "999999999.sock"  # no process has this pid
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays; nothing listens
    async with workers(tmp_path) as (a, b):
        await a.step(5, 1.0, start=True)
        assert (await b.step(5, 1.0))["total"] == 2.0
        await a.step(6, 1.0, start=True)  # a start tells every listed worker; the stale one holds nothing
    assert not stale.exists()


async def test_a_connection_from_another_user_is_closed_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    async with workers(tmp_path) as (a, b):
        monkeypatch.setattr("app.sequence_peers.os.getuid", lambda: 4242)  # the socket's peer is now "another user"
        reader, writer = await asyncio.open_unix_connection(str(a.peers.path))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()


async def test_a_sockets_folder_is_the_owners_alone(tmp_path: Path) -> None:
    folder = tmp_path / "peers"
    async with workers(folder, count=1) as (a,):
        assert folder.stat().st_mode & 0o777 == 0o700
        assert a.peers.path.stat().st_mode & 0o777 == 0o600


def test_tensors_cross_with_their_types_shapes_and_strings() -> None:
    tensors = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([[-1, 2**40]], dtype=np.int64),
               "b": np.array([[True, False]]), "h": np.array([1.5], dtype=np.float16),
               "s": np.array([["héllo", ""]], dtype=object), "u": np.array([[255]], dtype=np.uint8),
               "big": np.array([[1.0, 2.0]], dtype=">f8")}  # another byte order crosses as little-endian
    described, parts = pack(tensors)
    back = unpack(json.loads(json.dumps(described)), b"".join(parts))
    assert list(back) == list(tensors)
    for name, array in tensors.items():
        assert back[name].shape == array.shape
        assert back[name].tolist() == array.tolist()
    assert back["s"].dtype == object
    assert back["b"].dtype == np.bool_
    assert back["big"].dtype == np.dtype("<f8")


@pytest.mark.parametrize(("described", "payload", "why"), [
    ([["x", "<f4", [2], 8]], b"\0" * 4, "runs past the end"),
    ([["x", "<f4", [2], 8]], b"\0" * 12, "not claimed by any input"),
    ([["x", "|O", [1], 8]], b"\0" * 8, "a type the server never sends"),
    ([["x", "no such type", [1], 4]], b"\0" * 4, "do not fit"),
    ([["x", "BYTES", [2], 4]], b"\0" * 4, "needs 2 strings"),
])
def test_tensors_that_do_not_fit_their_bytes_are_refused(described: list[list[object]], payload: bytes,
                                                         why: str) -> None:
    with pytest.raises(PeerProtocolError, match=why):
        unpack(described, payload)  # type: ignore[arg-type]


async def test_a_frame_past_its_bound_is_refused_before_it_is_read() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack("<IQ", 10, 1 << 40))
    with pytest.raises(PeerProtocolError, match="past the bound"):
        await read_frame(reader, 1 << 20)


def test_errors_cross_as_the_kind_and_message_raised() -> None:
    assert type(relayed({"kind": "InvalidInput", "message": "m"})) is InvalidInput
    full = relayed({"kind": "QueueFull", "message": "full", "retry_after_s": 3})
    assert isinstance(full, QueueFull)
    assert full.retry_after_s == 3
    assert full.message == "full"
    unknown = relayed({"kind": "SystemExit", "message": "x"})  # never a class outside the server's errors
    assert type(unknown) is ServingError
    assert unknown.status_code == 500
