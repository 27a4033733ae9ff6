"""Free ports for the servers the tests and load tools start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from load_tests import ports


class _Kernel:
    """Sockets whose bind to port 0 gets the next of `offered`, as the kernel may offer a port
    again once the socket that found it is closed."""

    def __init__(self, offered: list[int]) -> None:
        self.offered: Iterator[int] = iter(offered)

    def socket(self) -> Any:
        kernel = self

        class _Socket:
            def __enter__(self) -> _Socket:
                return self

            def __exit__(self, *_: object) -> None:
                pass

            def bind(self, address: tuple[str, int]) -> None:
                self.port = next(kernel.offered)

            def getsockname(self) -> tuple[str, int]:
                return "127.0.0.1", self.port

        return _Socket()


def test_a_port_offered_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_HANDED_OUT", set())
    monkeypatch.setattr(ports.socket, "socket", _Kernel([41393, 41393, 41393, 41400]).socket)
    assert [ports.free_port(), ports.free_port()] == [41393, 41400]


def test_real_ports_are_all_different() -> None:
    found = [ports.free_port() for _ in range(50)]
    assert len(set(found)) == 50
