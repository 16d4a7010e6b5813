"""The per-episode JSONL log of a benchmark run: append-only, crash-safe, resumable.

Each finished episode is one JSON line, written with a single ``write`` of the whole line,
flushed and fsync'ed before the next episode starts, so a crash or ``kill -9`` loses at most
the episode in flight. A torn last line (the process died mid-write) is dropped when the log
is read back. Re-running the same suite reads the log and runs only the episodes whose key is
missing; rows are never duplicated.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.suite import EpisodeKey

KEY_FIELDS = ("policy", "task", "condition", "seed", "index")
# Columns of every row (documented in the README's leaderboard section).
ROW_FIELDS = (
    *KEY_FIELDS,
    "start_id",  # "<task>-<seed>": the start state (sim layout)
    "instruction",  # what the policy was told (perturbed under instruction conditions)
    "success",  # the verdict: true / false, or null (judge abstained or the episode errored)
    "score",  # the judge's confidence in success, [0, 1]
    "judge",  # judge id
    "steps",  # env steps run
    "seconds",  # wall time of the episode (its share of a batch in the world model)
    "ms_per_step",
    "error",  # null, or why the episode could not be run (never counted as a failure)
)


class EpisodeLog:
    """Append-only JSONL log of episode rows keyed by :class:`EpisodeKey`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self._keys: set[tuple] = set()
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        with open(self.path, "rb") as file:
            data = file.read()
        lines = data.split(b"\n")
        torn = lines[-1].strip()  # no trailing newline: written partially
        for number, line in enumerate(lines[:-1], 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{self.path}: line {number} is not valid JSON ({error}); the log is corrupt "
                    "beyond a torn last line: move it away to start over"
                ) from error
            self._remember(row)
        if torn:
            warnings.warn(
                f"{self.path}: dropping a partially written last line (the run was interrupted)",
                stacklevel=3,
            )
            with open(self.path, "r+b") as file:  # cut it off so appends start on a fresh line
                file.truncate(len(data) - len(lines[-1]))

    def _remember(self, row: dict[str, Any]) -> None:
        key = row_key(row)
        if key in self._keys:
            raise ValueError(f"{self.path}: episode {key} appears twice")
        self._keys.add(key)
        self.rows.append(row)

    def __contains__(self, key: EpisodeKey) -> bool:
        return key.as_tuple() in self._keys

    def __len__(self) -> int:
        return len(self.rows)

    def missing(self, keys: Iterable[EpisodeKey], retry_errors: bool = False) -> list[EpisodeKey]:
        """The keys without a row (and, with ``retry_errors``, those whose row is an error)."""
        errored = {row_key(r) for r in self.rows if r.get("error")} if retry_errors else set()
        return [k for k in keys if k.as_tuple() not in self._keys or k.as_tuple() in errored]

    def rows_for(self, keys: Iterable[EpisodeKey]) -> list[dict[str, Any]]:
        """The rows of ``keys`` only (a log can hold episodes of seeds a suite no longer has)."""
        wanted = {k.as_tuple() for k in keys}
        return [r for r in self.rows if row_key(r) in wanted]

    def append(self, row: dict[str, Any]) -> None:
        """Write one finished episode (durably) before anything else happens."""
        unknown = set(row) - set(ROW_FIELDS)
        if unknown:
            raise ValueError(f"unknown row fields {sorted(unknown)}; valid: {ROW_FIELDS}")
        key = row_key(row)
        if key in self._keys:
            self._drop(key)  # an errored episode being retried replaces its row
        line = (json.dumps({f: row.get(f) for f in ROW_FIELDS}) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        self._remember(row)

    def _drop(self, key: tuple) -> None:
        """Rewrite the log without ``key``'s row (atomically: temp file + rename)."""
        self.rows = [r for r in self.rows if row_key(r) != key]
        self._keys.discard(key)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as file:
            for row in self.rows:
                file.write(json.dumps(row) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


def row_key(row: dict[str, Any]) -> tuple:
    """The resume key of a row (policy, task, condition, seed, index)."""
    try:
        return tuple(row[f] for f in KEY_FIELDS)
    except KeyError as error:
        raise ValueError(f"episode row lacks the key field {error}") from error
