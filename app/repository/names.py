"""What a client may call a model and a version, checked before anything touches the disk."""

from __future__ import annotations

import re

from app.errors import InvalidInput
from app.manifest import MAX_NAME_LENGTH, MAX_VERSION_DIGITS, MODEL_NAME_PATTERN

_NAME = re.compile(MODEL_NAME_PATTERN)


def check_name(name: str) -> None:
    """400 for a string no model can be named: a model's name is one plain folder name
    ('..', separators, NUL and the like never are)."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidInput(f"{shown!r} is not a model name: a name is 1 to {MAX_NAME_LENGTH} characters of "
                           "letters a-z and A-Z, digits, '.', '_' and '-', starting with a letter or digit")


def parse_version(version: str) -> int:
    """A version as a client names it (a path segment) as the number it is; 400 otherwise."""
    if not (version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS):
        shown = version if len(version) <= 32 else version[:32] + "..."
        raise InvalidInput(f"{shown!r} is not a model version: a version is a number of 1 to "
                           f"{MAX_VERSION_DIGITS} digits")
    return int(version)


def check_no_repository(repository_name: str) -> None:
    """The repository API's `repository_name` (gRPC's field, HTTP's `/v2/repository/{name}/...`)
    picks one of several model repositories; as in Triton, only none (all of them) is served:
    a model's name is unique across them (app/repository/disk.py), so no call needs one."""
    if repository_name:
        raise repository_named(repository_name)


def repository_named(repository_name: str) -> InvalidInput:
    """The 400 for a repository API call that names a repository."""
    return InvalidInput(f"repository_name {repository_name[:100]!r}: naming a repository is not supported; "
                        "leave it out (model names are unique across the model directories)")
