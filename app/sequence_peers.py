"""The workers of one server, to one another, for stateful models: a step of a sequence that
reached a worker other than the one holding it is run by that one.

A sequence's state lives in the worker that served its start. A client that keeps its
connection reaches that worker for every step; one that does not (curl, a client without a
session, a proxy or load balancer that pools its own connections to the server) reaches
whichever worker the kernel hands its connection to. So each worker listens on a Unix socket
of the control folder, `peers/<pid>.sock`; a worker that gets a step of a sequence it does not
hold sends it to the others, and the one holding it runs it as its own client's step (in the
sequence's order, with its controls, state and batching) and sends the outputs back. The worker
last found holding a sequence is asked first; the others only when it no longer does. A start
is always run where it arrives, and the other workers are told to forget any sequence they
hold under its ID (before its answer goes out), so that one ID is one sequence in the server.

Messages are a frame of two lengths, a JSON header and the tensors' bytes, as Triton's binary
tensors lay them out (no pickle: what a peer sends is never run). The socket is its owner's
alone (0600, in a 0700 folder), and a connection from another user is closed unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from app.errors import (
    ClientGone,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ModelRefusedInput,
    QueueFull,
    ServingError,
)
from app.processes import alive
from app.protocol.binary import BinaryReader, strings_to_bytes, to_little_endian_bytes
from app.sequences import SequenceFlags, SequenceId, StepTerms

if TYPE_CHECKING:
    from app.served_model import ServedModel

logger = logging.getLogger(__name__)

Reply = tuple[dict[str, Any], memoryview]
"""A message's header and its tensors' bytes."""
FindModel = Callable[[str, str], "ServedModel | None"]
"""A served model by name and version, None where this worker does not serve it."""

_FRAME = struct.Struct("<IQ")  # the header's length, the tensors' length
MAX_HEADER_BYTES = 1 << 20
ROUTES_KEPT = 4096
"""Sequences whose holder is remembered (the last found; a miss asks the others again)."""
LISTED_S = 1.0
"""How long the list of the other workers is kept when their folder seems unchanged."""
FORGET_WAIT_S = 5.0
"""The longest a start waits for the others to forget its ID (a worker that does not answer
by then is busy past any client's patience, or stuck)."""
_RELAYED: dict[str, type[ServingError]] = {kind.__name__: kind for kind in (
    ServingError, InvalidInput, ModelRefusedInput, ClientGone, ModelNotFound, ModelNotReady, DeadlineExceeded)}


class PeerGone(ModelNotReady):
    """The worker asked stopped answering while it ran a step (it exited, or was restarted)."""


class SequencePeers:
    """This worker's socket for the others, and its connections to them."""

    def __init__(self, folder: Path, max_message_bytes: int, me: str | None = None,
                 ran_elsewhere: Callable[[str], None] | None = None) -> None:
        """`folder`: where every worker's socket is (the control folder's `peers`);
        `max_message_bytes`: the most a message's tensors may take; `me`: this worker's name
        there (its pid); `ran_elsewhere`: told the model of each step another worker ran."""
        self.folder = folder
        self.max_message_bytes = max_message_bytes
        self.me = me or str(os.getpid())
        self.ran_elsewhere = ran_elsewhere
        self._find: FindModel = lambda name, version: None
        self._server: asyncio.Server | None = None
        self._connections: dict[str, _Connection] = {}
        self._holders: OrderedDict[tuple[str, str, SequenceId], str] = OrderedDict()
        self._answering: set[asyncio.Task[None]] = set()
        self._listed: list[str] = []
        self._listed_at = (-1, 0.0)  # the folder's mtime, and when it was listed
        self._served: set[asyncio.StreamWriter] = set()  # the others' connections to this one

    @property
    def path(self) -> Path:
        return self.folder / f"{self.me}.sock"

    async def start(self, find: FindModel) -> bool:
        """Listen for the others' steps, answered from `find`'s models. False (logged) where the
        socket cannot be made: sequences are then this worker's own."""
        self._find = find
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
            self.path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self.path))
                os.chmod(self.path, 0o600)  # before it listens: nobody else can ever connect
                self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=1 << 16)
            except BaseException:
                sock.close()
                raise
        except OSError as e:
            logger.warning("stateful models' sequences stay in the worker that started them (a step reaching another "
                           "worker is refused): cannot listen at %s: %s", self.path, e)
            return False
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.path.unlink(missing_ok=True)
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()
        for writer in list(self._served):  # the others see it go: their steps here in flight fail, not hang
            writer.close()
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # --- asking the others -----------------------------------------------------------

    async def step(self, model: str, version: str, inputs: dict[str, np.ndarray], flags: SequenceFlags,
                   terms: StepTerms) -> dict[str, np.ndarray] | None:
        """The step run by the worker holding its sequence: the one last found holding it first,
        then the others at once; None where none holds it."""
        key = (model, version, flags.id)
        tensors, parts = pack(inputs)
        header = {"op": "step", "model": model, "version": version, "sequence": flags.id, "end": flags.end,
                  "priority": terms.priority, "timeout_s": terms.timeout_s, "tensors": tensors}
        last = self._holders.get(key)
        for first in (True, False):
            names = ([last] if last is not None else []) if first else [n for n in self.others() if n != last]
            found = await self._ask(names, header, parts, terms.due)
            if found is None:
                continue
            name, (answer, payload) = found
            if self.ran_elsewhere is not None:
                self.ran_elsewhere(model)
            if flags.end:
                self._holders.pop(key, None)
            else:
                self._holders[key] = name
                self._holders.move_to_end(key)
                while len(self._holders) > ROUTES_KEPT:
                    self._holders.popitem(last=False)
            return unpack(answer["tensors"], payload)
        self._holders.pop(key, None)
        return None

    async def forget(self, model: str, version: str, sequence_id: SequenceId, terms: StepTerms) -> None:
        """Every other worker drops its sequence under this ID, if it holds one. Never raises:
        a worker that cannot be reached holds nothing that could run."""
        self._holders.pop((model, version, sequence_id), None)
        header = {"op": "forget", "model": model, "version": version, "sequence": sequence_id}
        try:
            await self._ask(self.others(), header, [], min(terms.due, time.monotonic() + FORGET_WAIT_S), every=True)
        except ServingError as e:
            logger.warning("the other workers may not have forgotten sequence %r of %s v%s: %s", sequence_id, model,
                           version, e.message)

    def others(self) -> list[str]:
        """The other workers listening now (their sockets in the folder), read again when the
        folder changes (a worker came or went) and every LISTED_S: a change within the same
        tick of the file system's clock leaves its time as it was."""
        try:
            changed, now = os.stat(self.folder).st_mtime_ns, time.monotonic()
            if changed != self._listed_at[0] or now - self._listed_at[1] > LISTED_S:
                self._listed = [entry.name.removesuffix(".sock") for entry in os.scandir(self.folder)
                                if entry.name.endswith(".sock") and entry.name != f"{self.me}.sock"]
                self._listed_at = changed, now
        except OSError:
            return []
        return self._listed

    async def _ask(self, names: list[str], header: dict[str, Any], parts: list[bytes], due: float,
                   every: bool = False) -> tuple[str, Reply] | None:
        """Sent to every worker named at once: the first that holds the sequence and its reply
        (a step's outputs); None where none does (or can be reached). A holder's refusal is
        raised here as it raised it; a worker that went away mid-call, where no other held the
        sequence, is PeerGone (it may have been the holder). `every`: wait for every reply
        (a forget), not only the holder's. Futures and a timer, no task per worker."""
        if not names:
            return None
        left = due - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"model {header['model']!r}: the request's time was spent before the other "
                                   "workers could be asked for its sequence")
        sent = {**header, "left_s": left}  # the deadline as time left, counted on from there
        pending: dict[asyncio.Future[Reply], str] = {}
        for name in names:
            connection = await self._connection(name)
            if connection is not None:
                pending[connection.call(sent, parts)] = name
        timer = asyncio.get_running_loop().call_later(left + 1.0, _overdue, list(pending),
                                                      header)  # the holder keeps the deadline; this, for a stuck one
        found: tuple[str, Reply] | None = None
        gone: PeerGone | None = None
        try:
            while pending and (found is None or every):
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for call in done:
                    name = pending.pop(call)
                    try:
                        answer, payload = call.result()
                    except PeerGone as e:
                        gone = e
                        continue
                    error = answer.get("error")
                    if error is not None:
                        raise relayed(error)
                    if answer.get("held") and found is None:
                        found = name, (answer, payload)
        finally:
            timer.cancel()
            for call in pending:  # not waited for: their outcome is nobody's
                call.add_done_callback(_drop_outcome)
        if found is None and gone is not None:
            raise gone
        return found

    async def _connection(self, name: str) -> _Connection | None:
        connection = self._connections.get(name)
        if connection is not None and not connection.closed:
            return connection
        path = self.folder / f"{name}.sock"
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 16)
        except OSError:
            if name.isdigit() and not alive(int(name)):  # a worker that exited without removing it
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        connection = self._connections[name] = _Connection(name, reader, writer, self.max_message_bytes)
        return connection

    # --- answering them --------------------------------------------------------------

    def _forget(self, header: dict[str, Any]) -> bool:
        model = self._find(str(header.get("model")), str(header.get("version")))
        return model is not None and model.sequences is not None and model.sequences.forget(header.get("sequence", ""))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not _same_user(writer):
            writer.close()
            return
        self._served.add(writer)
        try:
            while True:
                header, payload = await read_frame(reader, self.max_message_bytes)
                if header.get("op") == "forget":  # nothing to wait for: answered at once, with no task
                    write_frame(writer, {"held": self._forget(header), "call": header.get("call")}, [])
                    continue
                task = asyncio.ensure_future(self._answer(header, payload, writer))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the other worker closed its end
        except PeerProtocolError as e:
            logger.warning("closed a worker's connection to this one: %s", e)
        finally:
            self._served.discard(writer)
            writer.close()

    async def _answer(self, header: dict[str, Any], payload: memoryview, writer: asyncio.StreamWriter) -> None:
        try:
            reply, parts = await self._handle(header, payload)
        except ServingError as e:
            reply, parts = {"error": {"kind": type(e).__name__, "message": e.message,
                                      "retry_after_s": getattr(e, "retry_after_s", None)}}, []
        except Exception as e:  # a fault of this server's: logged here, said there without internals
            logger.error("a step another worker sent failed", exc_info=e)
            reply, parts = {"error": {"kind": "ServingError", "message": "internal server error"}}, []
        if not writer.is_closing():
            write_frame(writer, {**reply, "call": header.get("call")}, parts)

    async def _handle(self, header: dict[str, Any], payload: memoryview) -> tuple[dict[str, Any], list[bytes]]:
        model = self._find(str(header["model"]), str(header["version"]))
        if model is None or model.sequences is None:
            return {"held": False}, []
        sequence_id = header["sequence"]
        inputs = unpack(header["tensors"], payload)
        terms = StepTerms(int(header["priority"]), time.monotonic() + float(header.get("left_s", 0)),
                          float(header["timeout_s"]))
        outputs = await model.step_here(inputs, SequenceFlags(sequence_id, end=bool(header["end"])), terms)
        if outputs is None:
            return {"held": False}, []
        tensors, parts = pack(outputs)
        return {"held": True, "tensors": tensors}, parts


class _Connection:
    """This worker's connection to another: its calls in flight, answered in any order."""

    _calls = itertools.count()

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_message_bytes: int) -> None:
        self.name = name
        self.writer = writer
        self.closed = False
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._reading = asyncio.ensure_future(self._read(reader, max_message_bytes))

    def call(self, header: dict[str, Any], parts: list[bytes]) -> asyncio.Future[Reply]:
        """The reply to a message, once it comes."""
        number = next(self._calls)
        future = self._pending[number] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._pending.pop(number, None))
        write_frame(self.writer, {**header, "call": number}, parts)
        return future

    async def _read(self, reader: asyncio.StreamReader, max_message_bytes: int) -> None:
        why = "it closed the connection"
        try:
            while True:
                header, payload = await read_frame(reader, max_message_bytes)
                future = self._pending.pop(header.get("call", -1), None)
                if future is not None and not future.done():
                    future.set_result((header, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except PeerProtocolError as e:
            why = str(e)
        finally:
            self.close(why)

    def close(self, why: str = "this worker is stopping") -> None:
        self.closed = True
        self.writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(PeerGone(f"worker {self.name}, which held the sequence, stopped answering while "
                                              f"it ran the step ({why}): the step may or may not have run"))
        self._pending.clear()
        if not self._reading.done() and asyncio.current_task() is not self._reading:
            self._reading.cancel()


def _overdue(calls: list[asyncio.Future[Reply]], header: dict[str, Any]) -> None:
    for call in calls:
        if not call.done():
            call.set_exception(DeadlineExceeded(
                f"model {header['model']!r}: the worker asked for sequence {header['sequence']!r} did not answer "
                f"within {header.get('timeout_s', FORGET_WAIT_S):g} s"))


def _drop_outcome(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved: no "never retrieved" warning for an outcome nobody waits for


class PeerProtocolError(Exception):
    """A frame this server's workers never send (a header past its bound, a bad tensor)."""


def write_frame(writer: asyncio.StreamWriter, header: dict[str, Any], parts: list[bytes]) -> None:
    encoded = orjson.dumps(header)
    writer.writelines([_FRAME.pack(len(encoded), sum(len(part) for part in parts)), encoded, *parts])


async def read_frame(reader: asyncio.StreamReader, max_message_bytes: int) -> tuple[dict[str, Any], memoryview]:
    """A message's header and its tensors' bytes (a view of the message, read whole)."""
    header_bytes, payload_bytes = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if header_bytes > MAX_HEADER_BYTES or payload_bytes > max_message_bytes:
        raise PeerProtocolError(f"a message of {header_bytes:,} + {payload_bytes:,} bytes is past the bound "
                                f"({MAX_HEADER_BYTES:,} + {max_message_bytes:,})")
    message = memoryview(await reader.readexactly(header_bytes + payload_bytes))
    try:
        header = orjson.loads(message[:header_bytes])
    except orjson.JSONDecodeError as e:
        raise PeerProtocolError(f"a header that is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise PeerProtocolError("a header that is not a JSON object")
    return header, message[header_bytes:]


def pack(tensors: dict[str, np.ndarray]) -> tuple[list[list[Any]], list[bytes]]:
    """Tensors as a header's descriptions (name, dtype or BYTES, shape, size) and their bytes."""
    described, parts = [], []
    for name, array in tensors.items():
        if array.dtype == object:
            kind, data = "BYTES", strings_to_bytes(array)
        else:
            kind, data = array.dtype.newbyteorder("<").str, to_little_endian_bytes(array)
        described.append([name, kind, list(array.shape), len(data)])
        parts.append(data)
    return described, parts


def unpack(described: list[list[Any]], payload: bytes | memoryview) -> dict[str, np.ndarray]:
    """The tensors `pack` described, views of `payload` (BYTES as strings, as ONNX Runtime takes them)."""
    reader = BinaryReader(memoryview(payload))
    tensors = {}
    try:
        for name, kind, shape, size in described:
            if kind == "BYTES":
                tensors[name] = reader.read_strings(name, size, shape)
                continue
            dtype = np.dtype(kind)
            if dtype.kind not in "biufc":
                raise PeerProtocolError(f"tensor {name!r}: a type the server never sends, {kind!r}")
            tensors[name] = reader.read(name, size, dtype, shape)
        reader.check_consumed()
    except (InvalidInput, TypeError, ValueError) as e:
        raise PeerProtocolError(f"tensors that do not fit their bytes: {e}") from None
    return tensors


def relayed(error: dict[str, Any]) -> ServingError:
    """The error another worker answered a step with, as it raised it there."""
    message = str(error.get("message", ""))
    if error.get("kind") == QueueFull.__name__:
        return QueueFull(message, int(error.get("retry_after_s") or 1))
    return _RELAYED.get(str(error.get("kind")), ServingError)(message)


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """Whether the process at the other end runs as this one's user (the kernel's word, SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    return uid == os.getuid()
