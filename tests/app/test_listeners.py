"""What a worker's own listening socket costs when the worker dies, and the note that says so."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import __main__ as entry
from app import listeners
from app.settings import Settings


def test_the_kernel_setting_that_moves_a_closed_sockets_queue_is_read(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_migrate_req"
    setting.write_text("0\n")
    assert listeners.queue_moves_on_exit(setting) is False
    setting.write_text("1\n")
    assert listeners.queue_moves_on_exit(setting) is True
    assert listeners.queue_moves_on_exit(tmp_path / "absent") is None  # before Linux 5.14


@pytest.fixture
def notes(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("app")
    propagates = logger.propagate  # configure_logging (an earlier test's server) may have turned it off
    logger.propagate = True
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.setLevel(level)
        logger.propagate = propagates


@pytest.mark.skipif(not listeners.PER_WORKER, reason="only Linux spreads connections over sockets of their own")
@pytest.mark.parametrize("moves", [False, None])
def test_the_start_says_that_a_dying_worker_resets_its_queue(moves: bool | None, notes: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listeners, "queue_moves_on_exit", lambda: moves)
    entry._note_queues_of_own_sockets(Settings(), own_http_socket=True)
    [note] = notes.messages
    assert "listens on HTTP and gRPC sockets of its own" in note
    assert "resets the connections still waiting" in note
    assert ("tcp_migrate_req is 0" if moves is False else "Linux 5.14+") in note


def test_nothing_is_said_where_the_queue_moves_or_the_socket_is_shared(notes: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listeners, "queue_moves_on_exit", lambda: True)
    entry._note_queues_of_own_sockets(Settings(), own_http_socket=True)
    monkeypatch.setattr(listeners, "queue_moves_on_exit", lambda: False)
    entry._note_queues_of_own_sockets(Settings(grpc=False), own_http_socket=False)  # one shared HTTP socket, no gRPC
    assert notes.messages == []


def test_a_worker_accepts_once_its_own_socket_listens_and_not_after_it_closes() -> None:
    """app/main.py hands `accepting` to the worker's readiness report (app/repository/shared.py)."""
    import pickle

    sock = pickle.loads(pickle.dumps(listeners.WorkerSocket("127.0.0.1", 0)))  # as uvicorn's worker gets it
    try:
        assert sock in listeners._OWN
        assert not listeners.accepting()  # bound, not listening: the kernel gives it no connection
        sock.listen()
        assert listeners.accepting()
    finally:
        sock.close()
        assert not listeners.accepting()  # its server stopped
        listeners._OWN.remove(sock)
    assert listeners.accepting()  # none of its own: the parent's shared socket listens already
