"""The serving record: which version of each model serves, since when, and how
its process ended; the facts the crash-loop rule (sidecar.manager.crashloop) judges.

A version that crashes the process (segfault, abort, OOM kill) leaves no trace
of its own, so the trace is written beforehand: when a version starts serving,
`serving.json` says so (`survived` False); once it has served for the crash
window it is marked `survived`; a clean stop marks the record `clean` and
clears the models. At the next start, a record that is not clean lists what
was serving when the process died. The file is replaced atomically (the same
write-temp, fsync, rename as state.json), off the request path; an unreadable
file is set aside and judged as "nothing to judge", never an error at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sidecar.state.store import write_atomically

log = logging.getLogger("sidecar.state")

RECORD_FILE = "serving.json"
FORMAT = 1
#: Crash times kept per digest (the reason quotes them; older ones add nothing).
MAX_TIMES = 10


@dataclass(frozen=True, slots=True)
class Serving:
    """One model's serving version, since when (unix s), and whether it has
    served for the crash window without the process ending."""

    version: int
    digest: str
    since: float
    survived: bool = False


@dataclass(frozen=True, slots=True)
class Crashes:
    """Unclean ends in a row within the window of these bytes starting to serve;
    `times`: the starts (unix s) that detected them, the last MAX_TIMES."""

    count: int
    times: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ServingRecord:
    #: True only after a clean stop was recorded (or with no record at all).
    clean: bool = True
    #: model -> the version serving it
    models: dict[str, Serving] = field(default_factory=dict)
    #: digest -> its crashes in a row
    crashes: dict[str, Crashes] = field(default_factory=dict)

    # Pure constructors: each returns a new record and leaves this one alone.

    def serving(self, model: str, version: int, digest: str, since: float) -> ServingRecord:
        """`model` started serving `version` at `since`: a fresh crash window."""
        models = {**self.models, model: Serving(version, digest, since)}
        return replace(self, clean=False, models=models)

    def survived(self, model: str, digest: str, *, since: float | None = None
                 ) -> ServingRecord:
        """`model`'s version with `digest` served for the whole window: marked, and
        its digest's crash count reset. No change if the model serves other bytes
        by now (or, with `since`, started serving them again at another time)."""
        current = self.models.get(model)
        if current is None or current.digest != digest or (
                since is not None and current.since != since):
            return self
        models = {**self.models, model: replace(current, survived=True)}
        crashes = {d: c for d, c in self.crashes.items() if d != digest}
        return replace(self, models=models, crashes=crashes)

    def not_serving(self, model: str) -> ServingRecord:
        """`model` serves nothing any more (unloaded): its end cannot be a crash."""
        if model not in self.models:
            return self
        return replace(self, models={m: s for m, s in self.models.items() if m != model})

    def stopped_cleanly(self) -> ServingRecord:
        """A clean stop: nothing serving, nothing to judge; crash counts kept."""
        return replace(self, clean=True, models={})

    def without_crashes(self, digest: str) -> ServingRecord:
        """`digest`'s crash count reset (its verdict was acted on, or it was
        unquarantined)."""
        if digest not in self.crashes:
            return self
        return replace(self, crashes={d: c for d, c in self.crashes.items() if d != digest})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "clean": self.clean,
            "models": {
                name: {"version": s.version, "digest": s.digest, "since": s.since,
                       "survived": s.survived}
                for name, s in sorted(self.models.items())
            },
            "crashes": {
                digest: {"count": c.count, "times": list(c.times)}
                for digest, c in sorted(self.crashes.items())
            },
        }

    @staticmethod
    def from_json(data: Any) -> ServingRecord:
        """Strict: anything of the wrong type or out of range raises ValueError."""
        obj = _dict(data, "record")
        if obj.get("format") != FORMAT:
            raise ValueError(f"unknown record format {obj.get('format')!r}")
        models = {
            _str(name, "model name"): _serving(_dict(s, f"model {name!r}"))
            for name, s in _dict(obj.get("models", {}), "models").items()
        }
        crashes = {
            _str(digest, "digest"): _crashes(_dict(c, f"crashes of {digest!r}"))
            for digest, c in _dict(obj.get("crashes", {}), "crashes").items()
        }
        return ServingRecord(_bool(obj.get("clean"), "clean"), models, crashes)


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a non-empty string, got {value!r}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    return value


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return value


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    result = float(value)  # OverflowError for a huge integer
    if not math.isfinite(result):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return result


def _serving(obj: dict[str, Any]) -> Serving:
    return Serving(_int(obj.get("version"), "version", 1), _str(obj.get("digest"), "digest"),
                   _time(obj.get("since"), "since"), _bool(obj.get("survived"), "survived"))


def _crashes(obj: dict[str, Any]) -> Crashes:
    times = obj.get("times")
    if not isinstance(times, list):
        raise ValueError(f"times: expected a list, got {times!r}")
    return Crashes(_int(obj.get("count"), "count", 0),
                   tuple(_time(t, "time") for t in times[-MAX_TIMES:]))


class RecordStore:
    """`serving.json` in the state directory (created by StateStore.open)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / RECORD_FILE

    def load(self) -> ServingRecord:
        """The saved record. Never raises: no file is an empty clean record
        (nothing to judge); a damaged one is logged, set aside as
        serving.json.corrupt when possible, and read as an empty clean record."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ServingRecord()
        except OSError as exc:  # a directory in its place, no permission, EIO
            return self._damaged(exc)
        try:
            return ServingRecord.from_json(json.loads(raw))
        except (ValueError, OverflowError, RecursionError) as exc:
            # ValueError covers bad JSON, bad UTF-8 and too long integers.
            return self._damaged(exc)

    def _damaged(self, exc: BaseException) -> ServingRecord:
        aside = self.path.with_name(RECORD_FILE + ".corrupt")
        try:
            os.replace(self.path, aside)
            kept = str(aside)
        except OSError as err:
            kept = f"not set aside: {err}"
        log.warning("serving record unreadable; no crash loop can be judged at this start",
                    extra={"path": str(self.path), "kept_as": kept,
                           "reason": f"{type(exc).__name__}: {exc}"})
        return ServingRecord()

    def save(self, record: ServingRecord) -> None:
        """Replace the file atomically (blocking: run it off the event loop, and
        never two at once: they share one temp file)."""
        data = json.dumps(record.to_json(), indent=2, sort_keys=True, allow_nan=False)
        write_atomically(self.path, data.encode() + b"\n")
