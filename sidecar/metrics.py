"""Prometheus metrics: read at scrape time from counters the sidecar keeps anyway.

Nothing on the request path touches prometheus_client: per-version counts and
latency histograms live in the manager's version stats, outcomes by gRPC code
in the servicer, changes in the event log. A collector turns them into metric
families when scraped, and the HTTP endpoint runs on the event loop, so a
scrape reads a consistent state without locks. Labels are model names known to
the repository, version numbers, codes, actions and actors: low cardinality.
See docs/operations.md for the list and sample queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.fleet.link import FleetLink
from sidecar.guard.guard import Guard
from sidecar.guard.shadow import ShadowMirror
from sidecar.manager.latency import BOUNDS
from sidecar.manager.manager import ModelManager
from sidecar.state.events import EventLog

if TYPE_CHECKING:
    from sidecar.quality.engine import QualityEngine

log = logging.getLogger("sidecar.metrics")

#: Exported latency buckets (seconds); the fine internal ones are summed into these.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0)


def _coarse(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative counts at BUCKETS from the internal histogram (bucket i holds
    values up to BOUNDS[i] ns; the last one everything above)."""
    out: list[tuple[str, float]] = []
    cumulative, index = 0, 0
    for edge in BUCKETS:
        edge_ns = edge * 1e9
        while index < len(BOUNDS) and BOUNDS[index] <= edge_ns:
            cumulative += counts[index]
            index += 1
        out.append((repr(edge), float(cumulative)))
    out.append(("+Inf", float(sum(counts))))
    return out


class SidecarCollector(Collector):
    def __init__(self, manager: ModelManager, outcomes: Mapping[tuple[str, str], int],
                 events: EventLog, guard: Guard | None, mirror: ShadowMirror | None,
                 quality: QualityEngine | None = None, fleet: FleetLink | None = None
                 ) -> None:
        self._manager = manager
        self._outcomes = outcomes
        self._events = events
        self._guard = guard
        self._mirror = mirror
        self._quality = quality
        self._fleet = fleet

    def collect(self) -> Iterator[Any]:
        info = InfoMetricFamily("sidecar_build", "The sidecar's version.")
        info.add_metric([], {"version": __version__})
        yield info
        yield from self._requests()
        yield from self._versions()
        yield from self._changes()
        yield from self._candidates()
        yield from self._judging()
        if self._fleet is not None:
            yield from self._fleet_figures(self._fleet)

    def _fleet_figures(self, fleet: FleetLink) -> Iterator[Any]:
        connected = GaugeMetricFamily(
            "sidecar_fleet_connected", "1 while this replica's watch of its fleet's"
            " state in etcd is up.", labels=["fleet"])
        connected.add_metric([fleet.fleet], 1.0 if fleet.connected else 0.0)
        yield connected
        status = fleet.status()
        members = GaugeMetricFamily("sidecar_fleet_members", "Live replicas of the fleet,"
                                    " as this replica sees them.", labels=["fleet"])
        members.add_metric([fleet.fleet], float(len(status.members)))
        yield members
        pending = GaugeMetricFamily("sidecar_fleet_pending", "Guard decisions made here and"
                                    " not yet published to the fleet (etcd unreachable).",
                                    labels=["fleet"])
        pending.add_metric([fleet.fleet], float(status.pending))
        yield pending
        diverged = GaugeMetricFamily(
            "sidecar_fleet_diverged", "1 while this replica cannot serve the fleet's version"
            " of a model (cannot load it, ...); the reason is in `ctl fleet`.",
            labels=["fleet", "model"])
        for entry in self._manager.entries():
            diverged.add_metric([fleet.fleet, entry.name],
                                1.0 if entry.name in fleet.errors else 0.0)
        yield diverged

    def _requests(self) -> Iterator[Any]:
        codes = CounterMetricFamily(
            "sidecar_grpc_requests", "ModelInfer calls by model and gRPC status code.",
            labels=["model", "code"])
        for (model, code), n in sorted(self._outcomes.items()):
            codes.add_metric([model, code], n)
        yield codes

    def _versions(self) -> Iterator[Any]:
        runs = CounterMetricFamily(
            "sidecar_inference", "Model runs by version and outcome (server side only).",
            labels=["model", "version", "outcome"])
        latency = HistogramMetricFamily(
            "sidecar_inference_latency_seconds",
            "Time in the server per request that reached the model.",
            labels=["model", "version"])
        inflight = GaugeMetricFamily("sidecar_inflight_requests",
                                     "Requests running on a version now.",
                                     labels=["model", "version"])
        state = GaugeMetricFamily("sidecar_version_state",
                                  "1 for each version's current state.",
                                  labels=["model", "version", "state"])
        active = InfoMetricFamily("sidecar_active_version",
                                  "The version that serves requests naming none.",
                                  labels=["model"])
        batches = CounterMetricFamily(
            "sidecar_batches", "Dynamic batches of more than one request run so far.",
            labels=["model", "version"])
        for entry in self._manager.entries():
            for number in sorted(entry.versions):
                version = entry.versions[number]
                v = str(number)
                state.add_metric([entry.name, v, entry.state_of(version)], 1)
                if version.loaded is None:
                    continue
                stats = version.stats
                runs.add_metric([entry.name, v, "success"], stats.success.count)
                runs.add_metric([entry.name, v, "failure"], stats.fail.count)
                inflight.add_metric([entry.name, v], version.inflight)
                total_ns = stats.success.ns + stats.fail.ns
                latency.add_metric([entry.name, v], _coarse(stats.latency.counts),
                                   total_ns / 1e9)
                if version.servable is not None and version.servable.batcher is not None:
                    batches.add_metric([entry.name, v], sum(
                        d.count for rows, d in stats.batches.items() if rows > 1))
            if entry.serving.active is not None:
                a = entry.serving.active
                active.add_metric([entry.name], {"version": str(a.number), "digest": a.digest})
        yield from (runs, latency, inflight, state, active, batches)

    def _changes(self) -> Iterator[Any]:
        changes = CounterMetricFamily(
            "sidecar_events", "Changes and their failures, by action and actor"
            " (activate, rollback, load-failed, canary-abort, quarantine, ...).",
            labels=["model", "action", "actor"])
        for (model, action, actor), n in sorted(self._events.counts.items()):
            changes.add_metric([model, action, actor], n)
        yield changes
        loads = GaugeMetricFamily("sidecar_load_seconds",
                                  "How long the version's load and warm-up took.",
                                  labels=["model", "version"])
        for entry in self._manager.entries():
            for version in entry.serving.loaded.values():
                if version.loaded is not None:
                    loads.add_metric([entry.name, str(version.number)],
                                     version.loaded.load_ns / 1e9)
        yield loads
        conflict = GaugeMetricFamily(
            "sidecar_declaration_conflict", "1 while the model's sidecar.json declares a"
            " version (serve) that the pod does not serve: quarantined, pinned, changed by"
            " a command or the guard, cannot load (docs/gitops.md); 0 otherwise.",
            labels=["model"])
        for entry in self._manager.entries():
            if entry.declaring:
                conflict.add_metric([entry.name], 1.0 if entry.conflict(
                    self._manager.quarantine) else 0.0)
        yield conflict

    def _candidates(self) -> Iterator[Any]:
        window = GaugeMetricFamily(
            "sidecar_guard_window", "The guard's window of a watched version:"
            " requests, failures, error_ratio.", labels=["model", "version", "figure"])
        shadow = CounterMetricFamily(
            "sidecar_shadow", "Shadow copies: compared, disagreed, dropped, failed.",
            labels=["model", "version", "figure"])
        if self._guard is not None:
            for watch in self._guard.watches():
                stats = watch.window.stats(time.monotonic())
                for figure, value in (("requests", stats.requests),
                                      ("failures", stats.failures),
                                      ("error_ratio", stats.error_ratio)):
                    window.add_metric([watch.servable.model, str(watch.servable.number),
                                       figure], value)
        if self._mirror is not None:
            for model, counts in sorted(self._mirror.counts.items()):
                for figure in ("compared", "disagreed", "dropped", "failed"):
                    shadow.add_metric([model, str(counts.version), figure],
                                      getattr(counts, figure))
        yield window
        yield shadow


    def _judging(self) -> Iterator[Any]:
        """Quality on ground truth (docs/quality.md) and the guard's proposals."""
        value = GaugeMetricFamily(
            "sidecar_quality", "The configured quality metric of a loaded version, on the"
            " rows whose truth met its answers (accuracy, recall, ..., mae, rmse).",
            labels=["model", "version", "metric"])
        samples = GaugeMetricFamily(
            "sidecar_quality_samples", "Rows with truth behind sidecar_quality.",
            labels=["model", "version", "metric"])
        feedback = CounterMetricFamily(
            "sidecar_feedback", "Feedback items by outcome: matched (by the version that"
            " answered the client), unmatched (unknown or expired id; version 0), invalid"
            " (version 0 when refused before the id matched).",
            labels=["model", "version", "outcome"])
        proposals = GaugeMetricFamily(
            "sidecar_proposals", "1 while a rollback proposal (guard mode propose) waits"
            " for a person.", labels=["model"])
        if self._quality is not None:
            for q in self._quality.quality_values():
                labels = [q.model, str(q.version), q.metric]
                value.add_metric(labels, q.value)
                samples.add_metric(labels, q.samples)
            for c in self._quality.feedback_counts():
                feedback.add_metric([c.model, str(c.version), c.outcome], c.items)
        if self._guard is not None:
            for entry in self._manager.entries():
                waiting = self._guard.proposal(entry.name) is not None
                proposals.add_metric([entry.name], 1 if waiting else 0)
        yield from (value, samples, feedback, proposals)


def registry(collector: SidecarCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


async def serve(listen: str, reg: CollectorRegistry) -> asyncio.Server:
    """A minimal HTTP/1.1 endpoint on the event loop: GET /metrics (and /)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) > 1 else ""
            if line and line[0] == "GET" and path.split("?")[0] in ("/metrics", "/"):
                body, status, kind = generate_latest(reg), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, kind = b"not found: try /metrics\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length:"
                         f" {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()

    host, _, port = listen.rpartition(":")
    return await asyncio.start_server(handle, host.strip("[]") or "0.0.0.0", int(port))
