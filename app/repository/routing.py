"""The routing table: which loaded version serves each model's requests.

Replaced, never changed in place, so a request sees either the table before a change or
the one after it, never half of one.
"""

from __future__ import annotations

from app.served_model import ServedModel


class RoutingTable:
    def __init__(self) -> None:
        self._served: dict[str, dict[int, ServedModel]] = {}
        self._newest: dict[str, ServedModel] = {}

    def find(self, name: str, version: int | None = None) -> ServedModel | None:
        """The version asked for, or the newest served; None where it is not served."""
        if version is None:
            return self._newest.get(name)
        return self._served.get(name, {}).get(version)

    def versions(self, name: str) -> dict[int, ServedModel]:
        return self._served.get(name, {})

    def names(self) -> list[str]:
        return sorted(self._served)

    def all(self) -> list[ServedModel]:
        return [m for versions in self._served.values() for m in versions.values()]

    def switch(self, name: str, versions: dict[int, ServedModel]) -> None:
        """Route the model's requests to `versions` from now on (none: not served), in one step."""
        served = dict(self._served)
        newest = dict(self._newest)
        if versions:
            served[name] = dict(sorted(versions.items()))
            newest[name] = versions[max(versions)]
        else:
            served.pop(name, None)
            newest.pop(name, None)
        self._served, self._newest = served, newest
