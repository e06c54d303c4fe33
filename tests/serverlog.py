"""The one reader of a server's JSON log lines, shared by the tests and the benchmarks.

`sidecar serve --log-format json` writes one JSON object per line on stdout
(README, "Logs"); bench/minimal_server.py writes its `serving` line the same
way. `ServerLog` owns reading them: a daemon thread reads the stream to its end
(so the pipe never fills), turns every line into a dict (a line that is not a
JSON object becomes {"event": "non-json", "line": ...}) and appends it to
`records`; `wait_for` hands out the next record with a given event.

It imports nothing but the standard library: the tests import it from tests/
(pytest's `pythonpath`), the benchmarks through bench/harness (which appends
tests/ to sys.path), and neither pulls in the other's dependencies.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import IO, Any

_END = {"event": "<exit>"}


class ServerLogError(AssertionError):
    """No such line within the timeout, or the server exited first (an assertion in tests)."""


def parse(line: str) -> dict[str, Any]:
    """One log line as a dict; {"event": "non-json", "line": line} if not a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    return record if isinstance(record, dict) else {"event": "non-json", "line": line}


class ServerLog:
    """The JSON lines of one server's stdout, read in a thread as they come."""

    def __init__(self, stream: IO[str], context: Callable[[], str] = lambda: "") -> None:
        """`context` is called for error messages (e.g. the server's stderr)."""
        self.records: list[dict[str, Any]] = []
        self._pending: queue.Queue[dict[str, Any]] = queue.Queue()
        self._context = context
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                record = parse(line)
                self.records.append(record)
                self._pending.put(record)
        except (OSError, ValueError):
            pass  # the stream was closed under us: the owner stopped the server
        finally:
            self._pending.put(_END)

    def wait_for(self, event: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """The next record not handed out before with this event (and these fields);
        the records skipped meanwhile stay in `records`. Raises ServerLogError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ServerLogError(f"no '{event}' log line within {timeout:g} s\n"
                                     f"{self._context()}") from None
            if record is _END:
                self._pending.put(_END)  # later waits fail at once too
                raise ServerLogError(f"server exited before '{event}'\n{self._context()}")
            if record.get("event") == event and all(
                    record.get(k) == v for k, v in fields.items()):
                return record
