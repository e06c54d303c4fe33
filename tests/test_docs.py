"""The walkthroughs of the docs, run as written.

A ```` ```console ```` block after `<!-- doc-test: NAME -->` (or `<!-- doc-test: NAME
start -->`) is a step of walkthrough NAME of its file; a walkthrough's steps run in
the order of the file, in one scratch copy of the checkout (its `.venv` the one
running the tests), on free ports: 8001-8003 and 9001-9003 are replaced in
commands and output, and the defaults point there too (`LISTEN`,
`CONTROL_LISTEN`, `METRICS_LISTEN` for make; `SIDECAR_CTL_ADDRESS`,
`SIDECAR_PROBE_ADDRESS` for `sidecar ctl` and `sidecar probe`).

In a block, `$ ` starts a command (it goes on while a quote is open or a line
ends with a backslash); the lines after it are what it prints (stdout and
stderr), where `...` stands for any text within a line and a line of just `...`
for any number of lines. A last line `[exit N]` is its exit code (else 0); a
last line `^C` means: interrupt it (SIGINT, as Ctrl-C does) once the lines above
have appeared, then it must exit 0. In a `start` block each command is started
in the background, like in another terminal: the walkthrough goes on once the
lines shown have appeared, and it is interrupted when the walkthrough ends.

Every wait is on output, with a timeout; nothing sleeps. Shell variables set by
a command (`active=$(...)`) are there for the next commands of the walkthrough.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "guard.md")
#: Ports of the docs, each replaced by a free one.
DOC_PORTS = (8001, 8002, 8003, 9001, 9002, 9003)
#: Seconds a step may take to show its output or end (a start takes about 2 s).
STEP_TIMEOUT_S = 60.0
#: Not copied into the scratch checkout.
SKIPPED = shutil.ignore_patterns(".git", ".venv", ".run", ".sidecar-state", "__pycache__",
                                 ".*_cache", "build", "dist", "results", "*.egg-info")
#: Variables that would change what the walkthrough's commands do.
CLEARED = ("LISTEN", "CONTROL_LISTEN", "METRICS_LISTEN", "MODELS", "STATE_DIR", "ARGS",
           "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")

_MARKER = re.compile(r"<!--\s*doc-test:\s*([\w-]+)(\s+start)?\s*-->")
_EXIT = re.compile(r"\[exit (\d+)\]")
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0
    interrupt: bool = False  # ^C once the expected lines have appeared
    background: bool = False  # a start block: runs until the walkthrough ends
    where: str = ""  # file:line, for messages


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # an open quote
        return False
    return True


def parse_block(lines: list[str], *, background: bool, where: str, first_line: int
                ) -> list[Command]:
    """The commands of one console block."""
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not commands:
                raise AssertionError(f"{where}:{first_line + i}: output before any command")
            commands[-1].expected.append(line)
            i += 1
            continue
        text, start = line[2:], i
        while not _complete(text):
            i += 1
            if i == len(lines):
                raise AssertionError(f"{where}:{first_line + start}: command never ends")
            text += "\n" + lines[i]
        commands.append(Command(text, background=background,
                                where=f"{where}:{first_line + start}"))
        i += 1
    for command in commands:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
        if command.expected and command.expected[-1] == "^C":
            command.interrupt = True
            command.expected.pop()
        elif command.expected and (m := _EXIT.fullmatch(command.expected[-1])):
            command.exit_code = int(m.group(1))
            command.expected.pop()
    return commands


def walkthroughs(path: Path) -> dict[str, list[Command]]:
    """The walkthroughs of one file by name, their commands in order."""
    found: dict[str, list[Command]] = {}
    lines = path.read_text().splitlines()
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    for n, line in enumerate(lines):
        marker = _MARKER.fullmatch(line.strip())
        if not marker:
            continue
        fence = n + 1
        while fence < len(lines) and not lines[fence].strip():
            fence += 1
        assert fence < len(lines) and lines[fence].strip() == "```console", (
            f"{where}:{n + 1}: a doc-test marker must come right before a ```console block")
        end = lines.index("```", fence + 1)
        found.setdefault(marker.group(1), []).extend(parse_block(
            lines[fence + 1:end], background=bool(marker.group(2)), where=where,
            first_line=fence + 2))
    return found


def pattern(expected: list[str]) -> re.Pattern[str]:
    """A regex for the whole output: `...` is any text, a `...` line any lines."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.rstrip().split("..."))
                         + r"\n")
    return re.compile("".join(parts))


def _normalized(lines: list[str]) -> str:
    return "".join(line.rstrip() + "\n" for line in lines)


class Running:
    """A command running in its own process group (Ctrl-C reaches all of it), its
    output read line by line as it comes."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, rx: re.Pattern[str], timeout: float) -> bool:
        """Read until the output so far matches `rx` whole; False at its end or timeout."""
        deadline = time.monotonic() + timeout
        while not rx.fullmatch(_normalized(self.lines)):
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                self._new.put(None)
                return False
            self.lines.append(line)
        return True

    def finish(self, timeout: float) -> int:
        """Wait for the end of the process and of its output; its exit code."""
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # something it started still holds its output
                return code
            if line is None:
                self._new.put(None)
                return code
            self.lines.append(line)

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STEP_TIMEOUT_S)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Walkthrough:
    """Runs the commands of one walkthrough in a scratch checkout."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.ports = dict(zip(DOC_PORTS, free_ports(len(DOC_PORTS)), strict=True))
        self._port_rx = re.compile(r"(?<=:)(" + "|".join(map(str, DOC_PORTS)) + r")(?!\d)")
        p = self.ports
        env = {k: v for k, v in os.environ.items()
               if k not in CLEARED and not k.startswith("SIDECAR_")}
        env.update(LISTEN=f"0.0.0.0:{p[8001]}", CONTROL_LISTEN=f"127.0.0.1:{p[8002]}",
                   METRICS_LISTEN=f"0.0.0.0:{p[8003]}",
                   SIDECAR_CTL_ADDRESS=f"127.0.0.1:{p[8002]}",
                   SIDECAR_PROBE_ADDRESS=f"127.0.0.1:{p[8001]}")
        self.env = env
        self.variables = checkout / ".doc-test-variables"
        self.names: list[str] = []
        self.background: list[tuple[Command, Running]] = []

    def substitute(self, text: str) -> str:
        return self._port_rx.sub(lambda m: str(self.ports[int(m.group(1))]), text)

    def _script(self, command: str) -> str:
        """The command, after the variables earlier commands set, saving its own."""
        self.names += [n for n in _ASSIGNMENT.findall(command) if n not in self.names]
        save = (f"declare -p {' '.join(self.names)} > {shlex.quote(str(self.variables))}"
                " 2>/dev/null\n") if self.names else ""
        return (f"[ -f {shlex.quote(str(self.variables))} ] && . "
                f"{shlex.quote(str(self.variables))}\n{command}\n"
                f"__doc_test_rc=$?\n{save}exit $__doc_test_rc\n")

    def _explain(self, command: Command, what: str, lines: list[str]) -> str:
        others = "".join(f"\n--- {c.text} (background) printed:\n" + "\n".join(r.lines[-40:])
                         for c, r in self.background)
        return (f"{command.where}: $ {command.text}\n{what}\n--- expected:\n"
                + "\n".join(self.substitute(line) for line in command.expected)
                + "\n--- got:\n" + "\n".join(lines) + others)

    def run(self, command: Command) -> None:
        rx = pattern([self.substitute(line) for line in command.expected])
        running = Running(self._script(self.substitute(command.text)), self.checkout, self.env)
        if command.background:
            self.background.append((command, running))
            if not running.wait_for(rx, STEP_TIMEOUT_S):
                raise AssertionError(self._explain(command, "did not show", running.lines))
            return
        try:
            if command.interrupt:
                if not running.wait_for(rx, STEP_TIMEOUT_S):
                    raise AssertionError(self._explain(command, "did not show",
                                                       running.lines))
                running.interrupt()
            code = running.finish(STEP_TIMEOUT_S)
        finally:
            running.kill()
        assert code == command.exit_code, self._explain(
            command, f"exit code {code}, expected {command.exit_code}", running.lines)
        if not command.interrupt:
            assert rx.fullmatch(_normalized(running.lines)), self._explain(
                command, "printed something else", running.lines)

    def stop(self) -> None:
        """Ctrl-C to what runs in the background, the last started first; a sidecar
        started by `make run` must stop cleanly."""
        for command, running in reversed(self.background):
            running.interrupt()
            try:
                running.finish(STEP_TIMEOUT_S)
            finally:
                running.kill()
            if command.text.startswith("make run"):
                assert any(line.endswith(" sidecar: stopped") for line in running.lines), (
                    self._explain(command, "did not stop cleanly at Ctrl-C", running.lines))


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A scratch copy of the checkout whose .venv is the one running the tests (its
    install stamp fresh, so make installs nothing)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs the tests to run in a virtualenv (make test makes .venv)")
    if shutil.which("make") is None:
        pytest.skip("needs make")
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, ignore=SKIPPED, symlinks=True)
    venv = copy / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    (venv / ".run").touch()
    yield copy


def _run_walkthrough(path: Path, name: str, checkout: Path) -> None:
    commands = walkthroughs(path).get(name)
    assert commands, f"{path}: no doc-test '{name}' walkthrough"
    walk = Walkthrough(checkout)
    try:
        for command in commands:
            walk.run(command)
    finally:
        walk.stop()


def test_readme_walkthrough(checkout: Path) -> None:
    """README.md: make run, make ctl, .venv/bin/sidecar ctl (rollbacks, a version
    published to the scratch copy and activated by the watcher, events --tail
    --follow), probe, a second instance beside the first, the Python alternative
    to grpcurl, and the deploy step with --expected-active."""
    _run_walkthrough(ROOT / "README.md", "readme", checkout)


def test_guard_demo_walkthrough(checkout: Path) -> None:
    """docs/guard.md: a sidecar beside make run's ports, examples/traffic.py, the
    buggy version published and rolled back by the guard, its digest quarantined."""
    _run_walkthrough(ROOT / "docs" / "guard.md", "guard", checkout)


def test_every_marked_block_belongs_to_a_walkthrough_that_runs() -> None:
    """Each doc's doc-test markers parse, and name a walkthrough a test above runs
    (a new name needs a test of its own)."""
    run = {("README.md", "readme"), ("guard.md", "guard")}
    for path in DOCS:
        for name, commands in walkthroughs(path).items():
            assert (path.name, name) in run, f"{path}: walkthrough '{name}' is never run"
            assert commands


def test_matching_rules() -> None:
    """`...` within a line, `...` lines, trailing spaces; nothing else is loose."""
    rx = pattern(["a ... c", "...", "end"])
    assert rx.fullmatch(_normalized(["a b c", "x", "y", "end  "]))
    assert rx.fullmatch(_normalized(["a  c", "end"]))
    assert not rx.fullmatch(_normalized(["a b c", "end", "more"]))
    assert not rx.fullmatch(_normalized(["a b d", "end"]))
    [cmd] = parse_block(["$ python -c '", "print(1)'", "1", "[exit 3]"], background=False,
                        where="x", first_line=1)
    assert (cmd.text, cmd.expected, cmd.exit_code) == ("python -c '\nprint(1)'", ["1"], 3)


def test_committed_buggy_version_is_what_make_models_builds() -> None:
    """examples/demo/tiny-buggy.onnx (the guard demo's buggy version, copied so the
    demo needs no onnx) is exactly make_models.buggy_model(2)."""
    import make_models

    committed = (ROOT / "examples" / "demo" / "tiny-buggy.onnx").read_bytes()
    assert committed == make_models.buggy_model(2).SerializeToString()


def test_make_run_defaults_are_the_sidecar_defaults() -> None:
    """The Makefile's addresses are the sidecar's defaults, and `make ctl` reaches
    `sidecar ctl`'s default address: the docs' commands with and without make agree."""
    from sidecar import ctl, probe
    from sidecar.settings import Settings

    variables = dict(re.findall(r"^(\w+)\s*\?=[ \t]*(.*)$", (ROOT / "Makefile").read_text(),
                                re.MULTILINE))
    defaults = Settings()
    assert variables["LISTEN"] == defaults.listen
    assert variables["CONTROL_LISTEN"] == defaults.control_listen == ctl.DEFAULT_ADDRESS
    assert variables["METRICS_LISTEN"] == defaults.metrics_listen
    assert defaults.listen.rsplit(":", 1)[1] == probe.DEFAULT_ADDRESS.rsplit(":", 1)[1]
    assert variables["MODELS"] == ".run/models"
    assert "/.run/" in (ROOT / ".gitignore").read_text().split()
