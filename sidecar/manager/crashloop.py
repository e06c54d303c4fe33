"""The crash-loop rule, judged once at start: a pure function of the serving record.

A version whose inference kills the process (segfault, abort, OOM kill) would
be restored at every restart and the pod would crash forever. So: a version
that was serving when the process ended without a clean stop, before it had
served for the crash window, counts one crash against its digest; `limit`
such ends in a row give a verdict: roll it back before serving and quarantine
it, with a reason that says "crash", the count and the times.

- A clean stop never counts, and changes no count.
- A version that survived the window resets its digest's count ("in a row").
- Bytes that served nowhere at the end keep their count unchanged.
- The same bytes serving under two models count once per end, and give a
  verdict for each model.
- `limit` <= 0 turns verdicts off; counting goes on, so the counts stay true.

The process's end time is unknown (a kill leaves no trace) and a restart can
come minutes later (Kubernetes' back-off), so `now - since` proves nothing:
`survived`, marked by the manager's timer, is the only evidence of the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sidecar.state.record import MAX_TIMES, Crashes, ServingRecord


@dataclass(frozen=True, slots=True)
class CrashVerdict:
    """Roll `model` back from `version` before serving, and quarantine `digest`."""

    model: str
    version: int
    digest: str
    count: int
    times: tuple[float, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class CrashJudgement:
    #: digest -> crashes in a row, to persist (through `record`) before serving
    crashes: dict[str, Crashes]
    #: by model name
    verdicts: tuple[CrashVerdict, ...] = ()

    @property
    def record(self) -> ServingRecord:
        """The record to save at once, before anything serves: the new counts and
        no model serving (so a crash while loading is not judged twice)."""
        return ServingRecord(clean=False, models={}, crashes=dict(self.crashes))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reason(count: int, window_s: float, version: int, times: tuple[float, ...]) -> str:
    """The quarantine reason: says "crash", the count, the window and the times."""
    which = "" if len(times) >= count else f"the last {len(times)} "
    plural = "" if count == 1 else "s"
    return (f"crash loop: the process ended without a clean stop {count} time{plural} in a row"
            f" within {window_s:g} s of version {version} starting to serve"
            f" ({which}detected at {', '.join(_utc(t) for t in times)})")


def judge(record: ServingRecord, *, now: float, window_s: float, limit: int
          ) -> CrashJudgement:
    """Count the end the record tells of (at the start at `now`), and judge."""
    if record.clean:
        return CrashJudgement(dict(record.crashes))
    crashed = {s.digest for s in record.models.values() if not s.survived}
    survived = {s.digest for s in record.models.values() if s.survived} - crashed
    crashes = {d: c for d, c in record.crashes.items() if d not in survived}
    for digest in sorted(crashed):
        before = crashes.get(digest, Crashes(0))
        crashes[digest] = Crashes(before.count + 1, (*before.times, now)[-MAX_TIMES:])
    verdicts: list[CrashVerdict] = []
    if limit > 0:
        for model, serving in sorted(record.models.items()):
            if serving.survived or crashes[serving.digest].count < limit:
                continue
            counted = crashes[serving.digest]
            verdicts.append(CrashVerdict(
                model, serving.version, serving.digest, counted.count, counted.times,
                reason(counted.count, window_s, serving.version, counted.times)))
    return CrashJudgement(crashes, tuple(verdicts))
