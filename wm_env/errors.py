"""Project-wide error types and the "did you mean" helper for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WmGymError(Exception):
    """Base class of the errors this project raises on purpose."""


class CorruptFileError(WmGymError, ValueError):
    """A file on disk is missing, truncated or does not match what its metadata says.

    The message always names the file.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnknownNameError(WmGymError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(unknown_name_message(kind, name, self.valid))

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.args[0]


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """``unknown <kind> 'name'; did you mean 'x'? valid: a, b, c``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} Valid {kind}s: {', '.join(valid)}"


def lookup(kind: str, name: str, registry: dict):
    """Return ``registry[name]`` or raise :class:`UnknownNameError` with a suggestion."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownNameError(kind, name, registry) from None
