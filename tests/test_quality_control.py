"""Issue 14, sections 3 and 4 from the outside: `sidecar ctl compare`, `proposals`,
`approve`, `dismiss`, `guard --mode/--approve-after`, `events --follow`, and the
quality series on /metrics.

Real servers and real models: the classifiers, feedback client and helpers of
tests/test_quality.py (version 1 always right, version 2 never predicts class 3).
The ctl commands run as `python -m sidecar ctl` (tests/test_control.py's `ctl`).
No sleeps: the tests wait on figures and on the lines `ctl events --follow`
prints, with deadlines. Which rows a proposal names is deterministic (seeded
inputs, feedback judged in order), so the "same evidence" steps are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import pytest
import test_quality
from helpers import client, infer_input
from test_control import ctl, ctl_json
from test_ops import scrape, value
from test_quality import (
    GOOD,
    QUALITY,
    WRONG_ON_3,
    _send_until,
    active_version,
    guard_state,
    item,
    label,
    start_probation,
    write_classifier,
)

from sidecar.ctl import compare_json
from sidecar.handlers.control import CompareView
from sidecar.quality.engine import CompareRow, MetricFigure, describe_row
from sidecar.rpc import control_converters as conv

feedback_for = test_quality.feedback_for  # the fixture: a feedback client per address


def never() -> bool:
    return False


class Follower:
    """`sidecar ctl events --follow --model MODEL` in a process of its own: the lines a
    person (or a bot reading them) sees, collected by a thread; tests wait on them."""

    def __init__(self, address: str, model: str) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        env = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONTROL_TOKEN"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "ctl", "--address", address, "events",
             "--follow", "--model", model],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The lines containing `text`, once there are `count` of them."""
        def found() -> list[str] | None:
            hits = [line for line in self.lines if text in line]
            return hits if len(hits) >= count else None

        with self._cond:
            hits = self._cond.wait_for(found, timeout)
        if hits is None:
            raise AssertionError(f"no {count} lines with {text!r} within {timeout}s;"
                                 f" saw {self.lines}")
        return hits

    def close(self) -> None:
        self._proc.terminate()
        self._proc.communicate(timeout=30)
        self._thread.join(timeout=30)


def events_of(address: str, model: str) -> list[dict[str, Any]]:
    return list(ctl_json(address, "events", "--model", model)["events"])


def proposals(address: str, *model: str) -> list[dict[str, Any]]:
    return list(ctl_json(address, "proposals", *model)["proposals"])


# ---- compare -------------------------------------------------------------------------

def test_compare_json_is_the_engines_row_under_metric_names() -> None:
    """`ctl compare --json` writes each row exactly as `describe_row` describes it,
    through the RPC's message: metrics under their names, unknown values null."""
    known = (MetricFigure("accuracy", 0.75, 200, (0.68, 0.81), True),
             MetricFigure("recall", 0.7, 200, (0.6, 0.8), False))
    unknown = (MetricFigure("accuracy", None, 0, None, True),
               MetricFigure("recall", None, 0, None, False))
    rows = (
        CompareRow("m", 1, "PREVIOUS", "ab" * 32, 7, 1, 1 / 7, 0.25, 1.5, unknown, 0, 3, 0,
                   0, 0.0, 0, None, 0, False, "why"),
        CompareRow("m", 2, "ACTIVE", "cd" * 32, 200, 0, 0.0, 0.125, 0.5, known, 200, 0, 2,
                   5, 2.5, 180, 0.9, 180, True, "why"),
    )
    view = CompareView("m", rows, 2, "why", "accuracy", "accuracy of SCORES",
                       {"matched": 200, "received": 203})
    shown = compare_json(conv.compare(view))
    assert shown["versions"] == [describe_row(r) for r in rows]
    assert shown["versions"][0]["accuracy"] == {"value": None, "samples": 0, "interval": None,
                                                "configured": True}
    assert {k: shown[k] for k in ("model", "metric", "favoured_version", "favour_reason",
                                  "feedback")} == {
        "model": "m", "metric": "accuracy", "favoured_version": 2, "favour_reason": "why",
        "feedback": {"matched": 200, "received": 203}}


def test_compare_shows_every_loaded_version_and_which_the_evidence_favours(
        start_server: Any, tmp_path: Path, feedback_for: Any) -> None:
    """`ctl compare MODEL [--json]`: a row per loaded version with traffic, latency,
    every metric of the task with samples and interval, agreement and the favoured
    version (here by the paired McNemar test, in mode off: nothing is judged, the
    figures are kept); the quality series on /metrics; `ctl guard --mode` and
    `--approve-after` are settings like `mode=` and `approve_after_s=`."""
    repo = tmp_path / "repo"
    write_classifier(repo, "cls", {1: GOOD, 2: WRONG_ON_3}, {"quality": QUALITY})
    make_models.write_model(make_models.tiny_model(1), repo, "tiny", 1)
    srv = start_server(repo, "--no-watch")
    a = srv.control_address

    shown = ctl_json(a, "guard", "cls", "--mode", "off", "--approve-after", "30")
    assert shown["overrides"] == {"mode": "off", "approve_after_s": "30.0"}
    assert shown["settings"]["mode"] == "off" and shown["settings"]["approve_after_s"] == "30.0"
    both = ctl(a, "guard", "cls", "mode=auto", "--mode", "off")
    assert both.returncode == 2 and "--mode and mode=... both given" in both.stderr
    negative = ctl(a, "guard", "cls", "--approve-after", "-1")
    assert negative.returncode == 2, negative.stderr
    assert "'approve_after_s' must not be negative" in negative.stderr
    unknown_mode = ctl(a, "guard", "cls", "--mode", "maybe")
    assert unknown_mode.returncode == 2 and "invalid choice: 'maybe'" in unknown_mode.stderr

    before = ctl_json(a, "compare", "cls")
    assert [(r["version"], r["role"]) for r in before["versions"]] == [
        (1, "PREVIOUS"), (2, "ACTIVE")]
    assert before["versions"][1]["accuracy"] == {"value": None, "samples": 0,
                                                 "interval": None, "configured": True}
    assert before["favoured_version"] == 0 and not any(
        r["favoured"] for r in before["versions"])
    assert before["favour_reason"].startswith("not enough evidence: 200 rows with truth")

    fb = feedback_for(srv.address)
    sent = _send_until(srv, fb, "cls", np.random.default_rng(14), limit=200, batch=25,
                       stop=never)
    assert sent == 200
    unmatched, invalid = fb.send(item("cls", "nope", label("SCORES", [1])),
                                 item("cls", "nope", label("NOPE", [1])))
    assert unmatched["outcome"] == "UNMATCHED" and invalid["code"] == "INVALID_ARGUMENT"

    after = ctl_json(a, "compare", "cls")
    assert after["model"] == "cls" and after["metric"] == "accuracy"
    assert after["quality"].startswith("accuracy of SCORES (classification), min_samples 200")
    rows = {r["version"]: r for r in after["versions"]}
    one, two = rows[1], rows[2]
    assert after["favoured_version"] == 1 and one["favoured"] and not two["favoured"]
    b = int(after["favour_reason"].split("only version 1 right on ", 1)[1].split(",")[0])
    assert after["favour_reason"].startswith(
        f"paired over 200 rows: only version 1 right on {b}, only version 2 right on 0"
        " (one-sided McNemar p ")
    assert one["favour_reason"] == two["favour_reason"] == after["favour_reason"]
    assert one["accuracy"] == {"value": 1.0, "samples": 200, "configured": True,
                               "interval": one["accuracy"]["interval"]}
    low, high = two["accuracy"]["interval"]
    assert two["accuracy"]["samples"] == 200 and two["accuracy"]["configured"]
    assert two["accuracy"]["value"] == pytest.approx(1 - b / 200)
    assert 0.6 < low <= two["accuracy"]["value"] <= high < one["accuracy"]["interval"][0]
    for row in (one, two):
        assert [k for k in ("accuracy", "recall", "precision", "f1") if k in row] == [
            "accuracy", "recall", "precision", "f1"]
        assert not row["recall"]["configured"] and row["recall"]["samples"] == 200
    assert (two["requests"], two["errors"], two["error_ratio"]) == (200, 0, 0.0)
    assert one["requests"] == 0  # the mirrored copies are not requests of clients
    assert two["p99_ms"] >= two["p50_ms"] > 0
    assert (two["matched"], two["mirrored"], one["matched"], one["mirrored"]) == (200, 0, 0, 200)
    assert one["paired"] == two["paired"] == 200 and two["agreement_rows"] == 200
    # version 1 is always right: both right or both wrong = version 2 right
    assert two["agreement"] == pytest.approx(two["accuracy"]["value"])
    feedback = after["feedback"]
    assert {k: feedback[k] for k in ("received", "matched", "unmatched", "invalid",
                                     "paired")} == {
        "received": 202, "matched": 200, "unmatched": 1, "invalid": 1, "paired": 200}

    table = ctl(a, "compare", "cls")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"cls: quality {after['quality']}"
    assert lines[1].split() == ["VERSION", "ROLE", "REQUESTS", "ERRORS", "P50", "MS", "P99",
                                "MS", "ACCURACY", "RECALL", "PRECISION", "F1", "AGREEMENT"]
    assert lines[2].split()[:4] == ["*", "1", "PREVIOUS", "0"]  # copies are no requests
    assert lines[3].split()[:4] == ["2", "ACTIVE", "200", "0"]
    assert f" {one['accuracy']['value']:.4g} [" in lines[2] and " n=200 " in lines[2]
    assert lines[4] == f"favoured (*): version 1: {after['favour_reason']}"
    assert lines[5] == "feedback: received 202, matched 200, unmatched 1, invalid 1, paired 200"

    # A model without quality settings: its rows, no metrics, nothing favoured.
    plain = ctl_json(a, "compare", "tiny")
    assert [(r["version"], r["role"]) for r in plain["versions"]] == [(1, "ACTIVE")]
    assert "accuracy" not in plain["versions"][0] and plain["metric"] == ""
    assert (plain["favoured_version"], plain["favour_reason"]) == (0, "no quality settings")
    assert ctl(a, "compare", "tiny").stdout.splitlines()[-1] == \
        "favoured: none: no quality settings"
    missing = ctl(a, "compare", "ghost")
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr

    # Mode off: no verdict, no proposal, no rollback.
    assert proposals(a) == [] and active_version(a, "cls") == 2

    samples = scrape(srv)
    for version, row in ((1, one), (2, two)):
        labels = {"model": "cls", "version": str(version), "metric": "accuracy"}
        assert value(samples, "sidecar_quality", **labels) == pytest.approx(
            row["accuracy"]["value"])
        assert value(samples, "sidecar_quality_samples", **labels) == 200
    feedback_series = {dict(k[1])["version"] + "/" + dict(k[1])["outcome"]: v
                       for k, v in samples.items()
                       if k[0] == "sidecar_feedback_total" and dict(k[1])["model"] == "cls"}
    assert feedback_series == {"1/matched": 0, "1/invalid": 0, "2/matched": 200,
                               "2/invalid": 0, "0/unmatched": 1, "0/invalid": 1}
    assert ("sidecar_proposals", frozenset({("model", "cls")})) in samples
    assert value(samples, "sidecar_proposals", model="cls") == 0
    assert value(samples, "sidecar_proposals", model="tiny") == 0
    assert not any(k[0] == "sidecar_quality" and dict(k[1])["model"] == "tiny"
                   for k in samples)


# ---- proposals, approve, dismiss --------------------------------------------------------

def _propose(srv: Any, fb: Any, model: str) -> dict[str, Any]:
    """Feed the worse version 2 on probation until the guard proposes; the proposal
    as `ctl proposals --json` shows it."""
    a = srv.control_address
    sent = _send_until(srv, fb, model, np.random.default_rng(7), limit=600, batch=25,
                       stop=lambda: "proposal" in guard_state(a, model))
    assert sent <= 400
    (proposal,) = proposals(a, model)
    return proposal


def test_proposals_and_approve_from_ctl(start_server: Any, tmp_path: Path,
                                        feedback_for: Any) -> None:
    """`ctl guard MODEL --mode propose`; the quality rule's verdict is a proposal
    (`ctl proposals [MODEL] [--json]`, `rollback-proposed` in `ctl events --follow`,
    `sidecar_proposals` 1), nothing changes; `ctl approve` rolls back and
    quarantines with the approving actor in the events."""
    repo = tmp_path / "repo"
    write_classifier(repo, "prop", {1: GOOD, 2: WRONG_ON_3}, {"quality": QUALITY})
    srv = start_server(repo, "--no-watch")
    a = srv.control_address
    assert ctl_json(a, "guard", "prop", "--mode", "propose")["settings"]["mode"] == "propose"
    assert ctl(a, "proposals").stdout == "no proposals waiting\n"
    start_probation(a, "prop")
    follower = Follower(a, "prop")
    try:
        proposal = _propose(srv, feedback_for(srv.address), "prop")
        (proposed,) = follower.wait_for(" rollback-proposed ")

        state = guard_state(a, "prop")
        assert proposal["id"] == state["proposal"] and proposal["model"] == "prop"
        assert proposal["rule"] == "quality-drop" and proposal["approve_at"] == 0
        assert proposal["reason"].startswith("accuracy 0.") and \
            "worse by more than 0.02" in proposal["reason"]
        assert proposal["key"].startswith("quality-drop/accuracy/2-1/")
        assert proposal["evidence"]["metric"] == "accuracy"
        assert proposal["evidence"]["drop.c"] == "0"
        source, target = proposal["from_version"], proposal["to_version"]
        assert (source["number"], target["number"]) == ("2", "1")
        assert proposed.endswith(f" prop rollback-proposed 2 ({source['digest'][:12]}) -> 1"
                                 f" ({target['digest'][:12]}) by guard: quality-drop:"
                                 f" {proposal['reason']}")
        assert proposals(a) == [proposal]
        table = ctl(a, "proposals", "prop").stdout.splitlines()
        assert table[0].split() == ["MODEL", "PROPOSAL", "ROLLBACK", "RULE", "PROPOSED",
                                    "APPROVE", "AT", "REASON"]
        assert table[1].split()[:7] == ["prop", proposal["id"], "2",
                                        f"({source['digest'][:12]})", "->", "1",
                                        f"({target['digest'][:12]})"]
        missing = ctl(a, "proposals", "ghost")
        assert missing.returncode == 3 and "unknown model" in missing.stderr
        assert active_version(a, "prop") == 2  # nothing changed

        compared = ctl_json(a, "compare", "prop")
        assert compared["favoured_version"] == 1
        assert compared["favour_reason"].startswith("quality-drop: accuracy 0.")
        assert value(scrape(srv), "sidecar_proposals", model="prop") == 1

        # Refused: another proposal's id, the sidecar's own actor name.
        wrong = ctl(a, "approve", "prop", "--proposal", "0123456789ab")
        assert wrong.returncode == 4, wrong.stderr
        assert "model 'prop' has no proposal 0123456789ab waiting" in wrong.stderr
        reserved = ctl(a, "approve", "prop", "--actor", "guard")
        assert reserved.returncode == 2 and "is the sidecar's own" in reserved.stderr
        assert proposals(a) == [proposal]

        decision = ctl_json(a, "approve", "prop", "--proposal", proposal["id"], "--actor",
                            "alice", "--reason", "confirmed")
        assert decision["approved"] is True and decision["actor"] == "alice"
        assert decision["proposal"] == proposal
        assert (decision["swap"]["from_version"], decision["swap"]["to_version"]) == (
            source, target)
        assert decision["quarantined"] == source["digest"]
        rollback, quarantine = follower.wait_for(" by alice", count=2)
    finally:
        follower.close()
    assert rollback.endswith(f" prop rollback 2 ({source['digest'][:12]}) -> 1"
                             f" ({target['digest'][:12]}) by alice: approved proposal"
                             f" {proposal['id']} (confirmed): quality-drop: {proposal['reason']}")
    assert f" prop quarantine - -> 2 ({source['digest'][:12]}) by alice: rolled back on" \
           f" approval of proposal {proposal['id']}: quality-drop" in quarantine
    assert active_version(a, "prop") == 1
    events = events_of(a, "prop")
    (logged,) = [e for e in events if e["action"] == "rollback" and e["actor"] == "alice"]
    assert logged["details"]["approved_by"] == "alice"
    assert logged["details"]["proposal"] == proposal["id"]
    assert logged["details"]["rule"] == "quality-drop"
    assert [e["action"] for e in events if e["actor"] == "guard"] == ["rollback-proposed"]
    versions = {int(v["number"]): v for v in ctl_json(a, "versions", "prop")["versions"]}
    assert versions[2]["quarantined"] is True and versions[2]["state"] == "PREVIOUS"

    assert proposals(a) == []
    assert value(scrape(srv), "sidecar_proposals", model="prop") == 0
    again = ctl(a, "approve", "prop")
    assert again.returncode == 4 and "model 'prop' has no rollback proposal waiting" in \
        again.stderr


def test_dismiss_keeps_serving_and_the_same_evidence_is_not_proposed_again(
        start_server: Any, tmp_path: Path, feedback_for: Any) -> None:
    """`ctl dismiss`: version 2 serves on, `rollback-dismissed` by the person; more rows
    of the same evidence (below twice the proposal's paired rows, rounded down to a
    power of two) are not proposed again; twice as many are new evidence, proposed."""
    repo = tmp_path / "repo"
    write_classifier(repo, "prop", {1: GOOD, 2: WRONG_ON_3},
                     {"quality": QUALITY, "guard": {"mode": "propose"}})
    srv = start_server(repo, "--no-watch")
    a = srv.control_address
    start_probation(a, "prop")
    fb = feedback_for(srv.address)
    follower = Follower(a, "prop")
    try:
        proposal = _propose(srv, fb, "prop")
        follower.wait_for(" rollback-proposed ")
        bucket = int(proposal["key"].rsplit("/", 1)[1])
        paired = int(guard_state(a, "prop")["quality_paired_rows"])
        assert bucket <= paired < 2 * bucket, (bucket, paired)

        result = ctl(a, "dismiss", "prop", "--proposal", proposal["id"], "--actor", "bob",
                     "--reason", "known issue")
        assert result.returncode == 0, result.stderr
        digest = proposal["from_version"]["digest"][:12]
        assert result.stdout == (f"prop: dismissed proposal {proposal['id']} (quality-drop)"
                                 f" by bob; 2 ({digest}) serves on\n")
        (dismissed,) = follower.wait_for(" rollback-dismissed ")
        assert dismissed.endswith(f"by bob: dismissed proposal {proposal['id']}"
                                  " (quality-drop): known issue")
        assert proposals(a) == [] and active_version(a, "prop") == 2
        gone = ctl(a, "dismiss", "prop")
        assert gone.returncode == 4 and "has no rollback proposal waiting" in gone.stderr

        # The same evidence: up to 2 * bucket - 1 paired rows, judged after each item.
        same = 2 * bucket - 1 - paired
        assert same >= 0
        assert _send_until(srv, fb, "prop", np.random.default_rng(8), limit=same, batch=same,
                           stop=never, prefix="same") == same
        assert guard_state(a, "prop")["quality_paired_rows"] == str(2 * bucket - 1)
        assert proposals(a) == []
        # One more row doubles it: new evidence, proposed again (had the same evidence
        # been proposed meanwhile, that proposal would still wait, with its old key).
        _send_until(srv, fb, "prop", np.random.default_rng(9), limit=1, batch=1, stop=never,
                    prefix="new")
        follower.wait_for(" rollback-proposed ", count=2)
    finally:
        follower.close()
    (again,) = proposals(a, "prop")
    assert again["id"] != proposal["id"]
    assert again["key"] == proposal["key"].rsplit("/", 1)[0] + f"/{2 * bucket}"
    assert again["evidence"]["drop.rows"] == str(2 * bucket)
    assert active_version(a, "prop") == 2
    x = np.ones((1, 4), np.float32)
    c = client(srv.address)
    try:
        assert c.infer("prop", [infer_input("INPUT0", x, "FP32")]).get_response() \
            .model_version == "2"
    finally:
        c.close()
    events = events_of(a, "prop")
    (logged,) = [e for e in events if e["action"] == "rollback-dismissed"]
    assert logged["actor"] == "bob" and int(logged["from_version"]["number"]) == 2
    assert logged["details"] == {"proposal": proposal["id"], "rule": "quality-drop",
                                 "evidence_key": proposal["key"]}
    assert [e["action"] for e in events if e["actor"] == "guard"] == [
        "rollback-proposed"] * 2
    assert not any(e["action"] in {"rollback", "quarantine"} and e["actor"] != "test"
                   for e in events)
    assert json.loads(ctl(a, "--json", "proposals").stdout)["proposals"] == [again]
