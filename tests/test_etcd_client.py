"""sidecar.fleet.etcd against a real etcd (Debian's 3.4, tests/etcd_server.py).

Every test starts its own etcd on free loopback ports; the ones that kill and
restart it keep its ports and data. Waits are on events (keepalive answers, watch
updates, the lease's `lost`), each with a generous timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from etcd_server import EtcdServer, _free_port
from grpc import aio

from sidecar.fleet.etcd import (
    Changes,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdOptions,
    EtcdUnavailable,
    EventType,
    KeyValue,
    Resync,
    Watch,
    WatchUpdate,
)
from sidecar.fleet.proto import etcd_pb2, etcd_pb2_grpc

#: Seconds any one awaited event may take; far above what each needs (< 3 s).
WAIT_S = 20.0

T = TypeVar("T")


def run(scenario: Callable[[], Coroutine[Any, Any, None]], limit: float = 90.0) -> None:
    """Run an async scenario, failing it (instead of hanging) after `limit` seconds."""
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def within(awaitable: Awaitable[T], seconds: float = WAIT_S) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def client(server: EtcdServer, deadline: float = 5.0) -> EtcdClient:
    return EtcdClient(EtcdOptions((server.endpoint,), deadline=deadline))


class Collector:
    """Drains a watch in the background; `wait_until` waits for a condition on what
    it has collected so far."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.updates: list[WatchUpdate] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        async for update in self.watch:
            async with self._changed:
                self.updates.append(update)
                self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await within(self._changed.wait_for(predicate))

    async def wait_revision(self, revision: int) -> None:
        await self.wait_until(lambda: self.watch.revision >= revision)

    def events(self, after: int = 0) -> list[tuple[EventType, str, bytes, int]]:
        return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision)
                for u in self.updates if isinstance(u, Changes)
                for e in u.events if e.kv.mod_revision > after]

    async def close(self) -> None:
        await self.watch.aclose()
        await within(self._task)


def apply(state: dict[str, bytes], update: WatchUpdate) -> None:
    """What a consumer does with an update."""
    if isinstance(update, Resync):
        state.clear()
        state.update({kv.key: kv.value for kv in update.items})
        return
    for event in update.events:
        if event.type is EventType.PUT:
            state[event.kv.key] = event.kv.value
        else:
            state.pop(event.kv.key, None)


def test_options_parse_endpoint_lists() -> None:
    """A comma-separated HOST:PORT list (http:// allowed) becomes the endpoints;
    a missing port and an empty list are refused (https and the TLS and auth
    options: tests/test_etcd_security.py)."""
    options = EtcdOptions.parse("10.0.0.1:2379, http://etcd-1:2379/,[::1]:2379", deadline=2)
    assert options.endpoints == ("10.0.0.1:2379", "etcd-1:2379", "[::1]:2379")
    assert options.deadline == 2
    assert not options.tls and not options.username
    for wrong in ("etcd", "etcd:port", " , ", "https://etcd"):
        with pytest.raises(ValueError):
            EtcdOptions.parse(wrong)


def test_put_get_prefix_and_delete(etcd_server: EtcdServer) -> None:
    """put/get/get_prefix/delete round-trip, with revisions, versions and sorted
    prefix listings that leave out keys outside the prefix."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            r1 = await etcd.put("/f/b", b"2")
            r2 = await etcd.put("/f/a", b"1")
            r3 = await etcd.put("/f/a", b"1'")
            await etcd.put("/f0", b"outside")  # the byte after "/" is "0"
            assert r1 < r2 < r3
            a = await etcd.get("/f/a")
            assert a == KeyValue(key="/f/a", value=b"1'", create_revision=r2, mod_revision=r3,
                                 version=2, lease=0)
            assert await etcd.get("/f/missing") is None
            items, revision = await etcd.get_prefix("/f/")
            assert [(kv.key, kv.value) for kv in items] == [("/f/a", b"1'"), ("/f/b", b"2")]
            assert revision == r3 + 1
            assert await etcd.delete("/f/a") is True
            assert await etcd.delete("/f/a") is False
            assert await etcd.get("/f/a") is None

    run(scenario)


def test_create_only_if_absent(etcd_server: EtcdServer) -> None:
    """create writes an absent key once; a second create leaves the first value."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            assert await etcd.create("/members/r1", b"first") is True
            assert await etcd.create("/members/r1", b"second") is False
            kv = await etcd.get("/members/r1")
            assert kv is not None and kv.value == b"first"

    run(scenario)


def test_swap_wins_once_and_the_loser_sees_the_winner(etcd_server: EtcdServer) -> None:
    """Two replicas swap from the same mod_revision: one wins and gets what it
    wrote; the other loses and gets the winner's value in the same answer."""

    async def scenario() -> None:
        async with client(etcd_server) as one, client(etcd_server) as two:
            created = await one.swap("/desired/m", b"v1", 0)  # 0: only if absent
            assert created.ok and created.current is not None
            assert created.current.version == 1
            read = await two.get("/desired/m")
            assert read == created.current
            won = await one.swap("/desired/m", b"v2", read.mod_revision)
            lost = await two.swap("/desired/m", b"v3", read.mod_revision)
            assert won.ok and not lost.ok
            assert lost.current == won.current == await one.get("/desired/m")
            assert won.current is not None and won.current.value == b"v2"
            assert won.current.version == 2
            assert won.current.create_revision == created.current.create_revision
            again = await two.swap("/desired/m", b"v3", lost.current.mod_revision)
            assert again.ok
            gone = await one.swap("/desired/absent", b"x", 5)
            assert gone == (False, None)

    run(scenario)


def test_lease_keepalive_keeps_keys_past_two_ttls(etcd_server: EtcdServer) -> None:
    """A lease of etcd's minimum TTL (2 s) kept alive by the client's loop keeps its
    key beyond two TTLs: 8 answered keepalives at TTL/3 span more than 4 s."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            lease = await etcd.grant(1)
            assert lease.ttl == 2  # raised to etcd's minimum
            await etcd.put("/members/r1", b"alive", lease=lease.id)
            start = asyncio.get_running_loop().time()
            assert await within(lease.wait_keepalives(8))
            assert asyncio.get_running_loop().time() - start > 2 * lease.ttl
            assert not lease.lost.is_set()
            kv = await etcd.get("/members/r1")
            assert kv is not None and kv.lease == lease.id
            assert await lease.time_to_live() > 0
            assert lease.expires_by > asyncio.get_running_loop().time()

    run(scenario)


def test_lease_loss_is_reported_when_etcd_dies(etcd_server: EtcdServer) -> None:
    """With etcd killed, no keepalive is answered: the lease reports itself lost
    within about a TTL; once etcd is back a new lease can be granted."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            lease = await etcd.grant(2)
            assert await within(lease.wait_keepalives(1))
            etcd_server.kill()
            await within(lease.lost.wait())
            assert "no keepalive answer" in lease.lost_reason
            assert await lease.wait_keepalives(10**6) is False  # returns: it is lost
            etcd_server.restart()
            fresh = await etcd.grant(2)
            assert await within(fresh.wait_keepalives(1))

    run(scenario)


def test_lease_revoked_elsewhere_is_reported_lost(etcd_server: EtcdServer) -> None:
    """When etcd answers a keepalive with TTL 0 (the lease was revoked by someone
    else), the lease reports itself lost at once."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            lease = await etcd.grant(2)  # keepalives every 2/3 s: one answers TTL 0
            async with aio.insecure_channel(etcd_server.endpoint) as channel:
                await etcd_pb2_grpc.LeaseStub(channel).LeaseRevoke(
                    etcd_pb2.LeaseRevokeRequest(ID=lease.id), timeout=5)
            await within(lease.lost.wait())
            assert "TTL 0" in lease.lost_reason
            with pytest.raises(EtcdError) as caught:
                await etcd.put("/k", b"v", lease=lease.id)
            assert caught.value.code == "NOT_FOUND"
            assert not isinstance(caught.value, EtcdUnavailable)

    run(scenario)


def test_revoke_deletes_the_keys_and_watchers_see_it(etcd_server: EtcdServer) -> None:
    """Revoking a lease deletes its keys at once: a watch of their prefix sees one
    DELETE each, in the same revision, and etcd no longer knows the lease."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            seen = Collector(etcd.watch_prefix("/members/"))
            lease = await etcd.grant(30)
            await etcd.put("/members/r1", b"a", lease=lease.id)
            last = await etcd.put("/members/r2", b"b", lease=lease.id)
            await seen.wait_revision(last)
            await lease.revoke()
            assert await lease.time_to_live() == -1
            await seen.wait_until(lambda: len(seen.events(after=last)) == 2)
            deletes = seen.events(after=last)
            assert [(t, k) for t, k, _, _ in deletes] == [
                (EventType.DELETE, "/members/r1"), (EventType.DELETE, "/members/r2")]
            assert deletes[0][3] == deletes[1][3]
            assert not lease.lost.is_set()  # revoked on purpose: not "lost"
            await seen.close()

    run(scenario)


def test_watch_lists_then_sees_every_change_in_order(etcd_server: EtcdServer) -> None:
    """A watch starts with the listing, then delivers every later write exactly
    once, in revision order, even writes racing the listing; replaying the
    updates gives etcd's final state."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd, client(etcd_server) as writer:
            await etcd.put("/d/pre", b"0")
            puts: list[tuple[int, str, bytes]] = []

            async def write() -> None:
                for i in range(60):
                    key, value = f"/d/k{i % 7}", f"v{i}".encode()
                    puts.append((await writer.put(key, value), key, value))

            watch = etcd.watch_prefix("/d/")
            writing = asyncio.create_task(write())
            first = await within(anext(watch))
            assert isinstance(first, Resync) and first.reason == "initial"
            state: dict[str, bytes] = {}
            apply(state, first)
            await within(writing)
            assert await writer.delete("/d/pre")
            events = []
            while watch.revision < puts[-1][0] or "/d/pre" in state:
                update = await within(anext(watch))
                assert isinstance(update, Changes)
                events.extend(update.events)
                apply(state, update)
            expected = [(EventType.PUT, key, value, rev) for rev, key, value in puts
                        if rev > first.revision]
            got = [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]
            assert got[:-1] == expected
            assert got[-1][:2] == (EventType.DELETE, "/d/pre")
            items, _ = await etcd.get_prefix("/d/")
            assert state == {kv.key: kv.value for kv in items}
            await watch.aclose()
            assert await within(anext(watch, None)) is None  # ended

    run(scenario)


def test_watch_resumes_after_etcd_is_killed_and_restarted(etcd_server: EtcdServer) -> None:
    """A watch outlives etcd's crash and restart (same ports, same data): it
    reconnects by itself and delivers every write made after the restart, in
    order, with nothing delivered twice."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            seen = Collector(etcd.watch_prefix("/s/"))
            before = await etcd.put("/s/a", b"1")
            await seen.wait_revision(before)
            await within(seen.watch.connected.wait())  # listed, and its stream is up
            etcd_server.kill()  # the stream breaks at once: its socket is closed
            etcd_server.restart()
            writes = [await etcd.put("/s/b", b"2"), await etcd.put("/s/a", b"3")]
            assert await etcd.delete("/s/b")
            last = (await etcd.get_prefix("/s/")).revision
            await seen.wait_revision(last)
            assert seen.events(after=before) == [
                (EventType.PUT, "/s/b", b"2", writes[0]),
                (EventType.PUT, "/s/a", b"3", writes[1]),
                (EventType.DELETE, "/s/b", b"", last)]
            assert seen.watch.connected.is_set()
            revisions = [event[3] for event in seen.events()]
            assert revisions == sorted(set(revisions))
            assert not any(isinstance(u, Resync) for u in seen.updates[1:])
            await seen.close()

    run(scenario)


def test_watch_from_a_compacted_revision_resyncs(etcd_server: EtcdServer) -> None:
    """Watching from a revision below the compacted one yields a Resync
    ("compacted") of the current state, then the changes after it; a read at a
    compacted revision raises EtcdCompacted."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            old = await etcd.put("/c/a", b"1")
            await etcd.put("/c/b", b"2")
            await etcd.delete("/c/a")
            now = await etcd.put("/c/b", b"3")
            await etcd.compact(now)
            with pytest.raises(EtcdCompacted):
                await etcd.get_prefix("/c/", revision=old)
            async with etcd.watch_prefix("/c/", start_revision=old + 1) as watch:
                first = await within(anext(watch))
                assert isinstance(first, Resync) and first.reason == "compacted"
                assert first.revision == now
                assert [(kv.key, kv.value) for kv in first.items] == [("/c/b", b"3")]
                later = await etcd.put("/c/c", b"4")
                update = await within(anext(watch))
                assert isinstance(update, Changes) and update.revision == later
                assert watch.revision == later

    run(scenario)


def test_watch_from_a_revision_delivers_history(etcd_server: EtcdServer) -> None:
    """Watching from a kept revision replays the changes since, no listing first."""

    async def scenario() -> None:
        async with client(etcd_server) as etcd:
            first = await etcd.put("/h/a", b"1")
            second = await etcd.put("/h/a", b"2")
            async with etcd.watch_prefix("/h/", start_revision=first + 1) as watch:
                update = await within(anext(watch))
                assert isinstance(update, Changes)
                assert [(e.kv.value, e.kv.mod_revision) for e in update.events] == [
                    (b"2", second)]

    run(scenario)


def test_unavailable_etcd_raises_within_the_deadline(etcd_server: EtcdServer) -> None:
    """With etcd down, reads and writes raise EtcdUnavailable by their deadline
    (the client retries until then); with a dead and a live endpoint, calls go to
    the live one."""

    async def scenario() -> None:
        dead = f"127.0.0.1:{_free_port()}"
        async with EtcdClient(EtcdOptions((dead, etcd_server.endpoint))) as both:
            assert await within(both.put("/k", b"v")) > 0
            kv = await within(both.get("/k"))
            assert kv is not None and kv.value == b"v"
        async with client(etcd_server, deadline=1.0) as etcd:
            assert await etcd.get("/k") is not None
            etcd_server.kill()
            with pytest.raises(EtcdUnavailable):
                await within(etcd.get("/k"), 1.0 + 5)
            with pytest.raises(EtcdUnavailable):
                await within(etcd.put("/k", b"w", deadline=0.5), 0.5 + 5)
            with pytest.raises(EtcdUnavailable):
                await within(etcd.grant(10), 1.0 + 5)

    run(scenario)
