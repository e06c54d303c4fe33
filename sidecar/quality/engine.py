"""The quality engine: remembers answers, joins truth to them, hands verdicts to the guard.

The pure parts (config, score, stats, memory, judge) are wired here to the
manager (what serves), the shadow mirror (the previous version's answers)
and the guard (what is done about a verdict):

- request path (`answered`, called by the data plane at the end of a
  successful ModelInfer that carries an id, for models with quality
  settings only): the configured output is `summarize`d and remembered for
  the version that answered; when that version is the active one, a share
  (`shadow_share`) of such requests is offered to the mirror for the warm
  previous version, whose answer joins the same id off the request path.
- feedback (`feedback`): the truth is checked against the model's outputs
  and, once the id is found, against the answer (rows, classes, width); each
  version's answer becomes per-row outcomes, added to that version's
  `MetricTally` (kept while the version is loaded) and, for the current pair
  (active, previous), to the pair's tallies and, when both versions
  answered, to its `PairedTally`. The pair's tallies start afresh whenever
  the active or the previous version changes.
- judging: after each matched item that the active version answered, once
  min_samples rows are in, `judge_quality` (about 10 us for accuracy and
  mae, up to 50 us for macro averages: cheap beside the feedback RPC, so
  every item is judged) - only while the guard wants it (the model's guard
  on and not "off", the active version on probation, no proposal about it
  waiting). A firing verdict goes to `Guard.quality_fired`: the guard's
  rollback path (auto) or a proposal (propose), with the evidence.

Unknown or expired ids are unmatched (counted, never an error); a truth that
does not fit is InvalidInputError, counted invalid. Everything here runs on
the event loop's thread.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from sidecar.guard.guard import Guard
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.types import InferInput
from sidecar.manager.entry import ModelEntry
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable
from sidecar.manager.version import ModelVersion
from sidecar.quality.config import METRICS, QualityConfig, parse_quality, with_overrides
from sidecar.quality.judge import QualityVerdict, judge_quality
from sidecar.quality.memory import AnswerMemory, MemoryCounts
from sidecar.quality.score import Outcomes, check_truth, outcomes, summarize
from sidecar.quality.stats import MetricTally, PairedTally, mcnemar_p

log = logging.getLogger("sidecar.quality")

MATCHED, UNMATCHED, INVALID = "matched", "unmatched", "invalid"
OUTCOMES = (MATCHED, UNMATCHED, INVALID)

#: model -> its sidecar.json "quality" object (None: the file has none)
QualitySource = Callable[[str], object]


# -- results -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """One feedback item's outcome (an invalid one raises instead)."""

    outcome: str  # matched | unmatched
    #: the versions whose answers met the truth: the one that answered the client
    #: first, then the previous version if it answered a mirrored copy
    versions: tuple[int, ...] = ()
    paired: bool = False  # both versions of the current pair answered it
    reason: str = ""  # why unmatched


@dataclass(frozen=True, slots=True)
class MetricFigure:
    metric: str  # accuracy | recall | precision | f1 | mae | rmse
    value: float | None  # None before any row
    samples: int  # rows with truth
    #: two-sided, fixed sample, at the configured confidence (for reading);
    #: None before any row
    interval: tuple[float, float] | None
    configured: bool  # the metric the quality rule judges


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One loaded version of a model, side by side with the others."""

    model: str
    version: int
    role: str  # ACTIVE | PREVIOUS | CANARY | SHADOW | WARM
    digest: str
    requests: int  # since it was loaded
    errors: int  # server-side failures
    error_ratio: float
    p50_ms: float
    p99_ms: float
    #: every metric of the task from the same rows, the configured one first
    #: (empty when the model has no quality settings)
    metrics: tuple[MetricFigure, ...]
    matched: int  # feedback items whose truth met the answer this version gave the client
    mirrored: int  # ... met the answer it gave a mirrored copy (as previous version)
    invalid: int  # feedback items refused against its answer
    reward_count: int
    reward_sum: float
    #: paired rows with the other version of the current pair (0 if not in it)
    paired: int
    #: agreement with the other version: for the current pair, the share of
    #: paired rows both got right or both got wrong; for a shadow run, the share
    #: of copies that agreed with the active version. None when nothing compared.
    agreement: float | None
    agreement_rows: int
    favoured: bool  # the evidence favours this version
    favour_reason: str  # why (or why no version is favoured): the same on every row


class FeedbackCount(NamedTuple):
    model: str
    version: int  # 0: no version known (unmatched, or refused before an id matched)
    outcome: str  # matched | unmatched | invalid
    items: int


class QualityValue(NamedTuple):
    model: str
    version: int
    metric: str
    value: float
    samples: int


# -- state -----------------------------------------------------------------------------

@dataclass(slots=True)
class VersionFeedback:
    matched: int = 0
    mirrored: int = 0
    invalid: int = 0
    rewards: int = 0
    reward_sum: float = 0.0


class _Pair:
    """The current (active, previous) pair's evidence, from the moment it began."""

    __slots__ = ("active", "active_tally", "looks", "paired", "previous", "previous_tally",
                 "verdict")

    def __init__(self, config: QualityConfig, active: int, previous: int) -> None:
        self.active = active
        self.previous = previous  # 0: none
        self.paired = PairedTally(config, active_version=active, previous_version=previous)
        self.active_tally = MetricTally(config, version=active)
        self.previous_tally = MetricTally(config, version=previous)
        self.verdict: QualityVerdict | None = None  # the last one judged
        self.looks = 0


@dataclass(slots=True)
class _ModelQuality:
    config: QualityConfig
    output: str = ""  # the output judged (the configured one, or the first)
    versions: dict[int, MetricTally] = field(default_factory=dict)
    feedback: dict[int, VersionFeedback] = field(default_factory=dict)
    received: int = 0
    matched: int = 0
    unmatched: int = 0
    invalid: int = 0  # items refused (with or without a version)
    paired: int = 0
    pair: _Pair | None = None
    skipped: int = 0  # answers without the judged output (the request asked for others)
    unfit: int = 0  # answers the task cannot read (summarize refused them)
    unfit_reason: str = ""

    def tally(self, version: int) -> MetricTally:
        tally = self.versions.get(version)
        if tally is None:
            tally = self.versions[version] = MetricTally(self.config, version=version)
        return tally

    def version_feedback(self, version: int) -> VersionFeedback:
        counts = self.feedback.get(version)
        if counts is None:
            counts = self.feedback[version] = VersionFeedback()
        return counts


class QualityEngine:
    def __init__(self, manager: ModelManager, guard: Guard, mirror: ShadowMirror | None = None,
                 *, source: QualitySource, max_ids: int = 100_000, max_age_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self._manager = manager
        self._guard = guard
        self._mirror = mirror
        self._source = source
        self._random = rng
        self.memory = AnswerMemory(max_ids, max_age_s, clock)
        #: model -> its quality state: only models with quality settings are in it.
        #: The data plane's per-model flag (`model in engine.models`).
        self.models: dict[str, _ModelQuality] = {}
        self._problems: dict[str, str] = {}  # model -> the settings problem last logged
        manager.add_swap_hook(self.on_swap)
        guard.quality = self

    # ---- settings ----------------------------------------------------------------------

    def _object(self, model: str, overrides: dict[str, str] | None = None) -> object:
        given = overrides if overrides is not None else (
            self._manager.entry(model).guard if self._manager.has_model(model) else {})
        return with_overrides(self._source(model), given)

    def check_overrides(self, model: str, overrides: dict[str, str]) -> None:
        """ValueError if a command's quality keys, over the file's, would not work."""
        obj = self._object(model, overrides)
        if obj is not None:
            parse_quality(obj)

    def start(self) -> None:
        """Read every model's settings (after the manager's start)."""
        for entry in self._manager.entries():
            self.reload(entry.name)

    def reload(self, model: str) -> None:
        """Re-read the model's quality settings; new settings start afresh (tallies,
        remembered answers). A bad object is logged once and quality is off."""
        try:
            obj = self._object(model)
        except ValueError as exc:
            obj, problem = None, str(exc)
        else:
            problem = ""
        if obj is not None:
            try:
                config = parse_quality(obj)
            except ValueError as exc:
                config, problem = None, str(exc)
        else:
            config = None
        if problem and self._problems.get(model) != problem:
            log.error("bad quality settings; quality is off for the model",
                      extra={"model": model, "reason": problem})
        self._problems[model] = problem
        state = self.models.get(model)
        if config is None:
            if state is not None:
                del self.models[model]
                self.memory.forget(model)
                log.info("quality off", extra={"model": model})
            return
        if state is not None and state.config == config:
            return
        self.memory.forget(model)
        state = self.models[model] = _ModelQuality(config)
        if self._manager.has_model(model):
            self._repair(self._manager.entry(model), state)
        log.info("quality on", extra={"model": model, "quality": config.describe()})

    def config(self, model: str) -> QualityConfig | None:
        state = self.models.get(model)
        return state.config if state is not None else None

    # ---- what serves -------------------------------------------------------------------

    def on_swap(self, entry: ModelEntry, before: ModelVersion | None, actor: str) -> None:
        """After a change of what serves: a new pair starts afresh; tallies of
        versions no longer loaded are dropped."""
        state = self.models.get(entry.name)
        if state is not None:
            self._repair(entry, state)

    def _repair(self, entry: ModelEntry, state: _ModelQuality) -> None:
        serving = entry.serving
        active, previous = serving.active, serving.previous
        if active is None:
            state.pair = None
        else:
            key = (active.number, previous.number if previous is not None else 0)
            pair = state.pair
            if pair is None or (pair.active, pair.previous) != key:
                state.pair = _Pair(state.config, *key)
            if active.servable is not None:
                names = active.servable.signature.output_names
                output = state.config.output or (names[0] if names else "")
                if output not in names and output != state.output:
                    log.error("the quality output is no output of the active version;"
                              " nothing is remembered", extra={"model": entry.name,
                                                                "output": output,
                                                                "outputs": list(names)})
                state.output = output
        for number in [n for n in state.versions if n not in serving.loaded]:
            del state.versions[number]

    # ---- the request path ----------------------------------------------------------------

    def answered(self, handle: Servable, request_id: str, names: list[str],
                 arrays: Sequence[np.ndarray], feeds: Mapping[str, np.ndarray],
                 explicit: bool) -> None:
        """Remember what `handle`'s version answered for `request_id`; offer a copy to
        the warm previous version when it is the active one's (not `explicit`: the
        request named no version). Call only for models in `models`."""
        model = handle.model
        state = self.models[model]
        output = state.output
        try:
            index = names.index(output)
        except ValueError:
            state.skipped += 1
            return
        try:
            answer = summarize(state.config, arrays[index])
        except ValueError as exc:
            self._unfit(model, state, exc)
            return
        self.memory.remember(model, request_id, handle.number, answer)
        share = state.config.shadow_share
        if explicit or self._mirror is None or share <= 0:
            return
        serving = self._manager.entry(model).serving
        active, previous = serving.active, serving.previous
        if active is None or active.servable is not handle or previous is None:
            return
        other = previous.servable
        if other is None or other.closed or (share < 1 and self._random() >= share):
            return
        self._mirror.offer_pair(other, request_id, feeds, output, self._paired_answer)

    def _paired_answer(self, model: str, request_id: str, version: int, array: np.ndarray
                       ) -> None:
        """The previous version's answer to a mirrored copy (on the loop, off the path)."""
        state = self.models.get(model)
        if state is None:
            return
        try:
            answer = summarize(state.config, array)
        except ValueError as exc:
            self._unfit(model, state, exc)
            return
        self.memory.join(model, request_id, version, answer)

    @staticmethod
    def _unfit(model: str, state: _ModelQuality, exc: ValueError) -> None:
        state.unfit += 1
        if state.unfit_reason != str(exc):
            state.unfit_reason = str(exc)
            log.error("answers do not fit the quality settings; not remembered",
                      extra={"model": model, "output": state.output, "reason": str(exc)})

    # ---- feedback ------------------------------------------------------------------------

    def feedback(self, model: str, request_id: str, truth: Sequence[InferInput],
                 reward: float | None = None) -> FeedbackResult:
        """Join one truth to the answers remembered for `request_id`.

        NotFoundError: unknown model; FailedPreconditionError: the model has no
        quality settings; InvalidInputError (counted invalid): the truth does not
        fit the model's outputs or the answer. An unknown id is UNMATCHED."""
        if not self._manager.has_model(model):
            raise NotFoundError(f"unknown model '{model[:200]}'")
        state = self.models.get(model)
        if state is None:
            raise FailedPreconditionError(
                f"model '{model}' has no quality settings (a \"quality\" object in its"
                " sidecar.json): feedback for it is not used")
        state.received += 1
        try:
            array = self._truth_array(model, state, truth, reward)
        except InvalidInputError:
            state.invalid += 1
            raise
        answers = self.memory.peek(model, request_id)
        if answers is None:
            self.memory.take(model, request_id)  # counted missed (and an expired id dropped)
            state.unmatched += 1
            return FeedbackResult(UNMATCHED, reason=f"no answer is remembered for id"
                                  f" '{request_id[:80]}' (unknown, expired, or given truth"
                                  " before)")
        config = state.config
        primary = next(iter(answers))
        first = answers[primary]
        try:
            rows = check_truth(config, array, first.rows, classes=first.classes,
                               width=first.width if config.task == "regression" else 0)
        except ValueError as exc:
            state.invalid += 1
            state.version_feedback(primary).invalid += 1
            raise InvalidInputError(f"truth '{state.output}' for id '{request_id[:80]}' of"
                                    f" model '{model}': {exc}") from exc
        self.memory.take(model, request_id)
        per: dict[int, Outcomes] = {}
        for version, answer in answers.items():
            if answer.rows != first.rows:
                continue  # cannot happen for a copy of the same request; never trusted
            try:
                per[version] = result = outcomes(config, answer, rows)
            except ValueError:
                continue
            state.tally(version).add(result)
        state.matched += 1
        counts = state.version_feedback(primary)
        counts.matched += 1
        if reward is not None:
            counts.rewards += 1
            counts.reward_sum += reward
        for version in per:
            if version != primary:
                state.version_feedback(version).mirrored += 1
        paired = False
        pair = state.pair
        if pair is not None:
            new, old = per.get(pair.active), per.get(pair.previous)
            if new is not None:
                pair.active_tally.add(new)
            if old is not None:
                pair.previous_tally.add(old)
            if new is not None and old is not None:
                pair.paired.add(new, old)
                state.paired += 1
                paired = True
            if new is not None:
                self._judge(model, state, pair)
        return FeedbackResult(MATCHED, tuple(per), paired)

    def refused(self, model: str) -> None:
        """Count an item for `model` refused before it reached `feedback` (its truth
        did not decode); nothing for a model without quality settings."""
        state = self.models.get(model)
        if state is not None:
            state.received += 1
            state.invalid += 1

    def _truth_array(self, model: str, state: _ModelQuality, truth: Sequence[InferInput],
                     reward: float | None) -> np.ndarray:
        """The truth of the judged output, decoded, once every tensor names an output."""
        if reward is not None and not math.isfinite(reward):
            raise InvalidInputError(f"reward must be a finite number, not {reward}")
        entry = self._manager.entry(model)
        active = entry.serving.active
        servable = active.servable if active is not None else None
        known = servable.signature.output_by_name if servable is not None else {}
        found: np.ndarray | None = None
        seen: set[str] = set()
        for tensor in truth:
            name = tensor.name
            if name in seen:
                raise InvalidInputError(f"truth '{name[:80]}' is given twice")
            seen.add(name)
            if known and name not in known:
                raise InvalidInputError(
                    f"truth '{name[:80]}' names no output of model '{model}' (its outputs:"
                    f" {', '.join(known)})")
            if tensor.datatype == "BYTES":
                raise InvalidInputError(f"truth '{name[:80]}' must be numeric, not BYTES")
            array = tensor.array()  # decoding checks its size against its shape
            if name == state.output:
                found = array
        if found is None:
            raise InvalidInputError(
                f"no truth for output '{state.output}' of model '{model}' (the output its"
                " quality is judged on); name the truth tensor after it")
        return found

    def _judge(self, model: str, state: _ModelQuality, pair: _Pair) -> None:
        config = state.config
        if pair.paired.samples < config.min_samples and (
                config.floor is None or pair.active_tally.rows < config.min_samples):
            return  # nothing can fire yet
        if not self._guard.quality_wanted(model, pair.active):
            return
        verdict = judge_quality(config, pair.paired, pair.active_tally,
                                pair.previous_tally if pair.previous else None)
        pair.verdict = verdict
        pair.looks += 1
        if verdict.fire:
            self._guard.quality_fired(model, verdict)

    # ---- reading -----------------------------------------------------------------------

    def counts(self, model: str) -> dict[str, int]:
        """The model's feedback and memory figures since start (zeros without settings)."""
        state = self.models.get(model)
        memory: MemoryCounts = self.memory.counts(model)
        out = {"received": 0, "matched": 0, "unmatched": 0, "invalid": 0, "paired": 0,
               "skipped": 0, "unfit": 0}
        if state is not None:
            out.update(received=state.received, matched=state.matched,
                       unmatched=state.unmatched, invalid=state.invalid, paired=state.paired,
                       skipped=state.skipped, unfit=state.unfit)
        out.update(ids_held=memory.held, ids_remembered=memory.remembered,
                   ids_expired=memory.evicted)
        copies = self._mirror.pairs.get(model) if self._mirror is not None else None
        if copies is not None:
            out.update(copies_offered=copies.offered, copies_dropped=copies.dropped,
                       copies_answered=copies.answered, copies_failed=copies.failed,
                       copies_pending=copies.offered - copies.answered - copies.failed
                       - copies.skipped)
        return out

    def feedback_counts(self) -> list[FeedbackCount]:
        """Feedback items by model, version and outcome (for Prometheus): matched by
        the version that answered the client; invalid by that version when the id
        matched, else version 0; unmatched under version 0."""
        rows: list[FeedbackCount] = []
        for model in sorted(self.models):
            state = self.models[model]
            by_version = 0
            for version in sorted(state.feedback):
                counts = state.feedback[version]
                rows.append(FeedbackCount(model, version, MATCHED, counts.matched))
                rows.append(FeedbackCount(model, version, INVALID, counts.invalid))
                by_version += counts.invalid
            rows.append(FeedbackCount(model, 0, UNMATCHED, state.unmatched))
            rows.append(FeedbackCount(model, 0, INVALID, state.invalid - by_version))
        return rows

    def quality_values(self) -> list[QualityValue]:
        """The configured metric per loaded version with rows (for Prometheus)."""
        rows: list[QualityValue] = []
        for model in sorted(self.models):
            state = self.models[model]
            for version in sorted(state.versions):
                tally = state.versions[version]
                value = tally.value
                if value is not None:
                    rows.append(QualityValue(model, version, state.config.metric, value,
                                             tally.rows))
        return rows

    def status(self, model: str) -> dict[str, str]:
        """Figures for `ctl guard MODEL` (the guard's status adds them)."""
        state = self.models.get(model)
        if state is None:
            problem = self._problems.get(model, "")
            return {"quality": f"off ({problem})" if problem else "off"}
        config = state.config
        out = {"quality": f"{config.metric} of {state.output or '?'} ({config.task}),"
                          f" min_samples {config.min_samples}, max_drop {config.max_drop:g}"
                          + (f", min {config.floor:g}" if config.floor is not None else "")}
        out.update({f"feedback_{k}": str(v) for k, v in self.counts(model).items()})
        pair = state.pair
        if pair is not None:
            out["quality_pair"] = f"{pair.active} vs {pair.previous or '-'}"
            out["quality_paired_rows"] = str(pair.paired.samples)
            if pair.verdict is not None:
                out["quality_verdict"] = pair.verdict.reason
        return out

    def compare(self, model: str) -> list[CompareRow]:
        """One row per loaded version (NotFoundError for an unknown model)."""
        entry = self._manager.entry(model)
        serving = entry.serving
        state = self.models.get(model)
        favoured, why = self.favoured(model)
        rows: list[CompareRow] = []
        for number in sorted(serving.loaded):
            version = serving.loaded[number]
            stats = version.stats
            requests = stats.success.count + stats.fail.count
            metrics: tuple[MetricFigure, ...] = ()
            counts = VersionFeedback()
            paired, agreement, agreement_rows = 0, None, 0
            if state is not None:
                tally = state.versions.get(number) or MetricTally(state.config, version=number)
                metrics = _figures(state.config, tally)
                counts = state.feedback.get(number, counts)
                pair = state.pair
                if pair is not None and pair.previous and number in (pair.active, pair.previous):
                    p = pair.paired
                    paired = p.samples
                    if state.config.task != "regression" and p.rows:
                        agreement_rows = p.rows
                        agreement = (p.both_right + p.both_wrong) / p.rows
            if version is serving.shadow and self._mirror is not None \
                    and version.servable is not None:
                run = self._mirror.counts_for(model, version.servable)
                if run.compared:
                    agreement_rows = run.compared
                    agreement = 1 - run.disagreed / run.compared
            rows.append(CompareRow(
                model=model, version=number, role=serving.role(version) or "WARM",
                digest=version.digest, requests=requests, errors=stats.fail.count,
                error_ratio=stats.fail.count / requests if requests else 0.0,
                p50_ms=stats.latency.percentile(50) / 1e6,
                p99_ms=stats.latency.percentile(99) / 1e6, metrics=metrics,
                matched=counts.matched, mirrored=counts.mirrored, invalid=counts.invalid,
                reward_count=counts.rewards, reward_sum=counts.reward_sum, paired=paired,
                agreement=agreement, agreement_rows=agreement_rows,
                favoured=number == favoured, favour_reason=why))
        return rows

    def favoured(self, model: str) -> tuple[int, str]:
        """(the version the evidence favours, 0 for none; why). A reading at this
        moment: the paired comparison when the current pair has min_samples paired
        rows (exact one-sided McNemar tests for accuracy, fixed-sample intervals of
        both versions on the same rows otherwise, at the configured confidence; a
        quality verdict that fired, as such), else the versions' own rows when two
        of them have min_samples rows and their intervals do not overlap."""
        state = self.models.get(model)
        if state is None:
            return 0, "no quality settings"
        config = state.config
        pair = state.pair
        if pair is not None and pair.previous and pair.paired.samples >= config.min_samples:
            if pair.verdict is not None and pair.verdict.fire:
                return pair.previous, f"{pair.verdict.rule}: {pair.verdict.reason}"
            p, n = pair.paired, pair.paired.samples
            if config.metric == "accuracy":
                worse, better = mcnemar_p(p.b, p.c), mcnemar_p(p.c, p.b)
                head = (f"paired over {n} rows: only version {pair.previous} right on {p.b},"
                        f" only version {pair.active} right on {p.c}")
                if better < config.alpha:
                    return pair.active, f"{head} (one-sided McNemar p {better:.2g})"
                if worse < config.alpha:
                    return pair.previous, f"{head} (one-sided McNemar p {worse:.2g})"
                return 0, f"{head}: no difference shown (McNemar p {min(worse, better):.2g})"
            return _by_intervals(config, [p.active, p.previous], f"paired over {n} rows")
        ready = [t for t in state.versions.values() if t.rows >= config.min_samples]
        if len(ready) >= 2:
            return _by_intervals(config, ready, "unpaired rows")
        return 0, (f"not enough evidence: {config.min_samples} rows with truth needed"
                   f" (paired: {pair.paired.samples if pair is not None else 0})")


def _figures(config: QualityConfig, tally: MetricTally) -> tuple[MetricFigure, ...]:
    names = [config.metric] + [m for m in METRICS[config.task] if m != config.metric]
    out: list[MetricFigure] = []
    for name in names:
        view = tally if name == config.metric else tally.view(name)
        value = view.value
        interval = view.interval() if value is not None else None
        out.append(MetricFigure(name, value, view.rows, interval, name == config.metric))
    return tuple(out)


def _by_intervals(config: QualityConfig, tallies: Sequence[MetricTally], what: str
                  ) -> tuple[int, str]:
    """The version whose fixed-sample interval lies wholly on the better side of
    every other's (0 if none)."""
    better = config.higher_is_better
    shown: list[str] = []
    bounds: dict[int, tuple[float, float]] = {}
    for tally in tallies:
        low, high = tally.interval()
        bounds[tally.version] = (low, high)
        shown.append(f"version {tally.version} {tally.value:.4g} [{low:.4g}, {high:.4g}]"
                     f" over {tally.rows} rows")
    for version, (low, high) in bounds.items():
        others = [b for v, b in bounds.items() if v != version]
        if all((low > o_high) if better else (high < o_low) for o_low, o_high in others):
            return version, f"{what}: {config.metric} " + "; ".join(shown)
    return 0, f"{what}: {config.metric} intervals overlap: " + "; ".join(shown)


def describe_row(row: CompareRow) -> dict[str, Any]:
    """A row as plain JSON values, its metrics under their names (`accuracy`, ...)."""
    out: dict[str, Any] = {
        "version": row.version, "role": row.role, "digest": row.digest,
        "requests": row.requests, "errors": row.errors, "error_ratio": row.error_ratio,
        "p50_ms": row.p50_ms, "p99_ms": row.p99_ms, "matched": row.matched,
        "mirrored": row.mirrored, "invalid": row.invalid, "reward_count": row.reward_count,
        "reward_sum": row.reward_sum, "paired": row.paired, "agreement": row.agreement,
        "agreement_rows": row.agreement_rows, "favoured": row.favoured,
        "favour_reason": row.favour_reason}
    for figure in row.metrics:
        out[figure.metric] = {"value": figure.value, "samples": figure.samples,
                              "interval": list(figure.interval) if figure.interval else None,
                              "configured": figure.configured}
    return out
