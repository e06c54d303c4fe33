"""sidecar.fleet.etcd with TLS and etcd's username/password auth, against a real etcd.

The servers are Debian's etcd 3.4 (tests/etcd_server.py): one serving https only,
with a throwaway CA made by openssl and `--client-cert-auth`; one with auth turned
on (user `root` with the role `root`, and `bob` without any role). Waits are on
events (watch updates, answered keepalives), each with a generous timeout; nothing
sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from etcd_server import EtcdServer, EtcdServerError, TlsFiles

from sidecar.fleet.etcd import (
    Changes,
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdOptions,
    EtcdUnavailable,
    Resync,
    Watch,
    WatchUpdate,
)

#: Seconds any one awaited event may take; far above what each needs (< 3 s).
WAIT_S = 20.0
ROOT_PASSWORD = "r00t-s3cret"
BOB_PASSWORD = "b0b-s3cret"

T = TypeVar("T")


def run(scenario: Callable[[], Coroutine[Any, Any, None]], limit: float = 60.0) -> None:
    """Run an async scenario, failing it (instead of hanging) after `limit` seconds."""
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def within(awaitable: Awaitable[T], seconds: float = WAIT_S) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def _start(data_dir: Path, tls: TlsFiles | None = None) -> EtcdServer:
    try:
        return EtcdServer(data_dir, tls=tls)
    except EtcdServerError as err:
        pytest.fail(f"cannot start etcd: {err}", pytrace=False)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    try:
        return TlsFiles.create(tmp_path / "tls")
    except EtcdServerError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def tls_server(tmp_path: Path, tls_files: TlsFiles) -> Iterator[EtcdServer]:
    """etcd serving https only and requiring a client certificate of the test CA."""
    server = _start(tmp_path / "etcd", tls_files)
    yield server
    server.stop()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """etcd (plain http) with auth on: `root` may do anything, `bob` nothing."""
    server = _start(tmp_path / "etcd")
    try:
        server.enable_auth(ROOT_PASSWORD, {"bob": BOB_PASSWORD})
        yield server
    finally:
        server.stop()


def mtls_options(server: EtcdServer, **extra: Any) -> EtcdOptions:
    assert server.tls is not None
    return EtcdOptions.parse(server.url, ca_file=str(server.tls.ca),
                             cert_file=str(server.tls.client_cert),
                             key_file=str(server.tls.client_key), **extra)


async def next_update(watch: Watch) -> WatchUpdate:
    return await within(anext(watch))


# -- options


def test_options_tls_and_auth_are_checked_when_parsed(tls_files: TlsFiles,
                                                      tmp_path: Path) -> None:
    """https:// turns TLS on (system roots without a CA file); TLS files with
    http://, mixed schemes, unreadable or non-PEM files, a certificate without its
    key and a username without a password are refused at parse time, naming what
    is wrong; the password shows in no repr."""
    ca, cert, key = str(tls_files.ca), str(tls_files.client_cert), str(tls_files.client_key)
    options = EtcdOptions.parse("https://etcd-1:2379, https://etcd-2:2379/")
    assert options.endpoints == ("etcd-1:2379", "etcd-2:2379")
    assert options.tls and options.ca_file == ""
    full = EtcdOptions.parse("etcd:2379", ca_file=ca, cert_file=cert, key_file=key,
                             username="fleet", password="hunter2", deadline=2)
    assert full.tls and (full.ca_file, full.cert_file, full.key_file) == (ca, cert, key)
    assert (full.username, full.password, full.deadline) == ("fleet", "hunter2", 2)
    assert "hunter2" not in repr(full) and "hunter2" not in str(full)
    assert "fleet" in repr(full)
    assert not EtcdOptions.parse("http://etcd:2379", username="u", password="p").tls

    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    wrong: list[tuple[dict[str, Any], str, str]] = [
        ({"ca_file": ca}, "http://etcd:2379", "http://"),
        ({"cert_file": cert, "key_file": key}, "http://etcd:2379", "http://"),
        ({}, "http://etcd-1:2379,https://etcd-2:2379", "mix"),
        ({}, "unix://etcd:2379", "scheme"),
        ({"ca_file": missing}, "etcd:2379", missing),
        ({"ca_file": str(not_pem)}, "etcd:2379", "not PEM"),
        ({"cert_file": cert}, "etcd:2379", "without key_file"),
        ({"key_file": key}, "etcd:2379", "without cert_file"),
        ({"cert_file": cert, "key_file": missing}, "etcd:2379", missing),
        ({"username": "fleet"}, "etcd:2379", "without a password"),
        ({"password": "hunter2"}, "etcd:2379", "without a username"),
    ]
    for kwargs, endpoints, message in wrong:
        with pytest.raises(ValueError, match=message) as caught:
            EtcdOptions.parse(endpoints, **kwargs)
        assert "hunter2" not in str(caught.value)


# -- TLS


def test_mutual_tls_put_get_watch_and_lease(tls_server: EtcdServer) -> None:
    """Over mutual TLS (the test CA, a client certificate): put/get, a watch that
    lists then sees a change, and a lease whose keepalives are answered."""

    async def scenario() -> None:
        async with EtcdClient(mtls_options(tls_server)) as etcd:
            revision = await etcd.put("/t/a", b"1")
            kv = await etcd.get("/t/a")
            assert kv is not None and kv.value == b"1" and kv.mod_revision == revision
            async with etcd.watch_prefix("/t/") as watch:
                first = await next_update(watch)
                assert isinstance(first, Resync)
                assert [kv.key for kv in first.items] == ["/t/a"]
                later = await etcd.put("/t/b", b"2")
                update = await next_update(watch)
                assert isinstance(update, Changes) and update.revision == later
            lease = await etcd.grant(2)
            assert await within(lease.wait_keepalives(2))
            assert not lease.lost.is_set()

    run(scenario)


def test_tls_without_the_ca_fails_within_the_deadline(tls_server: EtcdServer) -> None:
    """A client that cannot verify etcd's certificate (no CA file: the system's
    roots do not know the test CA), or that speaks plain text to a TLS port,
    raises EtcdUnavailable by its deadline, saying the handshake failed."""

    async def scenario() -> None:
        assert tls_server.tls is not None
        no_ca = EtcdOptions.parse(f"https://{tls_server.endpoint}", deadline=1.0,
                                  cert_file=str(tls_server.tls.client_cert),
                                  key_file=str(tls_server.tls.client_key))
        plain = EtcdOptions.parse(tls_server.endpoint, deadline=1.0)
        loop = asyncio.get_running_loop()
        for options, says in ((no_ca, "CERTIFICATE_VERIFY_FAILED"), (plain, "")):
            async with EtcdClient(options) as etcd:
                start = loop.time()
                with pytest.raises(EtcdUnavailable) as caught:
                    await within(etcd.get("/k"))
                assert loop.time() - start < 1.0 + 2
                assert says in str(caught.value)
                if says:
                    assert "TLS handshake failed" in str(caught.value)
                with pytest.raises(EtcdUnavailable):
                    await within(etcd.put("/k", b"v", deadline=0.5))

    run(scenario)


def test_mutual_tls_refuses_a_client_without_certificate(tls_server: EtcdServer) -> None:
    """With --client-cert-auth, a client that verifies etcd (the CA file) but shows
    no certificate of its own is refused: EtcdUnavailable by its deadline."""

    async def scenario() -> None:
        assert tls_server.tls is not None
        options = EtcdOptions.parse(tls_server.endpoint, ca_file=str(tls_server.tls.ca),
                                    deadline=1.0)
        loop = asyncio.get_running_loop()
        async with EtcdClient(options) as etcd:
            start = loop.time()
            with pytest.raises(EtcdUnavailable):
                await within(etcd.get("/k"))
            assert loop.time() - start < 1.0 + 2
        async with EtcdClient(mtls_options(tls_server)) as etcd:  # the same, with one
            assert await etcd.get("/k") is None

    run(scenario)


# -- auth


def test_auth_works_for_kv_watch_and_lease(auth_server: EtcdServer) -> None:
    """With the right password: KV calls, a watch and a lease's keepalives work."""

    async def scenario() -> None:
        options = EtcdOptions.parse(auth_server.endpoint, username="root",
                                    password=ROOT_PASSWORD)
        async with EtcdClient(options) as etcd:
            revision = await etcd.put("/a/x", b"1")
            assert await etcd.create("/a/y", b"2")
            kv = await etcd.get("/a/x")
            assert kv is not None and kv.mod_revision == revision
            async with etcd.watch_prefix("/a/") as watch:
                first = await next_update(watch)
                assert isinstance(first, Resync) and len(first.items) == 2
                later = await etcd.put("/a/x", b"3")
                update = await next_update(watch)
                assert isinstance(update, Changes) and update.revision == later
            lease = await etcd.grant(2)
            await etcd.put("/a/member", b"alive", lease=lease.id)
            assert await within(lease.wait_keepalives(3))
            assert await lease.time_to_live() > 0
            await lease.revoke()
            assert await etcd.get("/a/member") is None

    run(scenario)


def test_wrong_password_raises_auth_error_at_once(auth_server: EtcdServer) -> None:
    """A wrong password raises EtcdAuthError at once (no retrying until the
    deadline), from calls and from a watch, naming the user but not the password;
    a client without credentials is told that etcd wants some."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wrong = EtcdOptions.parse(auth_server.endpoint, username="root",
                                  password="not-the-password", deadline=10.0)
        async with EtcdClient(wrong) as etcd:
            start = loop.time()
            with pytest.raises(EtcdAuthError) as caught:
                await within(etcd.get("/k"))
            assert loop.time() - start < 2.0  # the deadline is 10 s
            assert "root" in str(caught.value) and "password" in str(caught.value)
            assert "not-the-password" not in str(caught.value)
            with pytest.raises(EtcdAuthError):
                await within(etcd.put("/k", b"v"))
            with pytest.raises(EtcdAuthError):
                await within(etcd.grant(10))
            with pytest.raises(EtcdAuthError):
                await next_update(etcd.watch_prefix("/k", start_revision=1))
            assert loop.time() - start < 5.0
        async with EtcdClient(EtcdOptions.parse(auth_server.endpoint, deadline=10.0)) as etcd:
            start = loop.time()
            with pytest.raises(EtcdAuthError, match="requires authentication"):
                await within(etcd.put("/k", b"v"))
            with pytest.raises(EtcdAuthError, match="requires authentication"):
                await next_update(etcd.watch_prefix("/k", start_revision=1))
            assert loop.time() - start < 2.0

    run(scenario)


def test_permission_denied_is_an_etcd_error_with_its_code(auth_server: EtcdServer) -> None:
    """A user etcd knows but allows nothing: its calls and its watch raise
    EtcdError with code PERMISSION_DENIED, neither retried nor an auth error."""

    async def scenario() -> None:
        options = EtcdOptions.parse(auth_server.endpoint, username="bob",
                                    password=BOB_PASSWORD, deadline=10.0)
        loop = asyncio.get_running_loop()
        async with EtcdClient(options) as etcd:
            start = loop.time()
            for call in (lambda: etcd.put("/k", b"v"), lambda: etcd.get("/k")):
                with pytest.raises(EtcdError) as caught:
                    await within(call())
                assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED.name
                assert not isinstance(caught.value, (EtcdUnavailable, EtcdAuthError))
            with pytest.raises(EtcdError) as caught:
                await next_update(etcd.watch_prefix("/k", start_revision=1))
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED.name
            assert "permission denied" in str(caught.value)
            assert loop.time() - start < 5.0

    run(scenario)


def test_credentials_work_before_and_after_auth_is_enabled(tmp_path: Path) -> None:
    """A client with credentials works against an etcd without auth (without a
    token, as etcd's Go client does), and keeps working once auth is turned on: the
    first refused call authenticates and is repeated."""
    server = _start(tmp_path / "etcd")
    try:
        async def before() -> None:
            async with EtcdClient(EtcdOptions.parse(server.endpoint, username="root",
                                                    password=ROOT_PASSWORD)) as etcd:
                await etcd.put("/b/k", b"1")
                server.enable_auth(ROOT_PASSWORD)  # blocks the loop: nothing else runs
                await etcd.put("/b/k", b"2")
                kv = await etcd.get("/b/k")
                assert kv is not None and kv.value == b"2"

        run(before)
    finally:
        server.stop()


def test_token_is_renewed_after_etcd_restarts(tls_server: EtcdServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Over mutual TLS with auth: etcd 3.4's simple tokens live in the member's
    memory, so a restart invalidates ours. A watch opened right after (etcd cancels
    it: invalid auth token), a watch that was open across the restart, a write and
    a lease all go on: the client authenticates again, once, and repeats."""
    tls_server.enable_auth(ROOT_PASSWORD)

    async def scenario() -> None:
        options = mtls_options(tls_server, username="root", password=ROOT_PASSWORD)
        async with EtcdClient(options) as etcd:
            # a write after authenticating: etcd stores the raft index it has
            # applied, so its restart does not replay the Authenticate (which would
            # make the token valid again)
            before = await etcd.put("/r/a", b"1")
            watch = etcd.watch_prefix("/r/")
            first = await next_update(watch)
            assert isinstance(first, Resync)
            pending = asyncio.create_task(next_update(watch))  # opens the stream
            await within(watch.connected.wait())
            lease = await etcd.grant(10)
            assert await within(lease.wait_keepalives(1))
            tls_server.stop()  # SIGTERM: etcd commits what it has applied
            tls_server.start()
            # first after the restart, before any unary call could renew the token:
            # a watch, which etcd cancels with "invalid auth token"
            async with etcd.watch_prefix("/r/", start_revision=before) as replay:
                update = await next_update(replay)
                assert isinstance(update, Changes) and update.revision == before
            revision = await within(etcd.put("/r/b", b"2"))
            update = await within(pending)  # the watch open across the restart
            assert isinstance(update, Changes) and update.revision == revision
            kv = await etcd.get("/r/b")
            assert kv is not None and kv.value == b"2"
            answered = lease.keepalives
            assert await within(lease.wait_keepalives(answered + 1))
            assert not lease.lost.is_set()
            await watch.aclose()

    with caplog.at_level(logging.DEBUG, logger="sidecar.fleet.etcd"):
        run(scenario)
    assert "refused the auth token" in caplog.text
    assert caplog.text.count("authenticated as 'root'") == 2
    assert ROOT_PASSWORD not in caplog.text
