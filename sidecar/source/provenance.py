"""Which git commit last changed a model file: its provenance, when the model
repository is a git work tree (a clone, or git-sync's `<link> -> .worktrees/<sha>`).

One `git log -1` per question, run synchronously and bounded by a timeout; it
is meant for a thread pool, off the request path, and the caller caches the
answer by file identity. Ordinary problems (not a git work tree, git missing,
an untracked file, git failing or too slow) give None, never an exception.

The path is resolved first, so a symlink on the way (git-sync's link) leads git
to the worktree and its `.git` file; a model file that is itself a symlink is
answered for the file it points to (the content served). Before git is started,
the folder's ancestors are checked for a `.git` (folder, or file as in
worktrees): a model repository outside git costs a few stat calls only.

Shallow clones (git-sync's default `--depth=1`) cannot know a file's true last
commit when that commit was not fetched: git then names the oldest fetched
commit. git marks that commit as "grafted", which `%D` reports in the same call
(all ref names are filtered out), so `Commit.shallow` is True exactly when the
answer may be wrong, and False when a shallow clone still holds the true commit.

Whether the file differs from HEAD (`dirty`) is not reported: `git status` is a
second process, and for a racily-clean index entry (a file written in the same
second as the index, as a checkout does) it hashes the whole file on every call
when the index cannot be rewritten (read-only mount, GIT_OPTIONAL_LOCKS=0): a
multi-gigabyte model would cost seconds per question.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("sidecar.source")

#: The git program, looked up on PATH.
GIT = "git"
#: Longest subject kept, in characters (a longer one ends with "...").
MAX_SUBJECT = 200
#: Hash, author time, committer time, decorations ("grafted" or ""), subject;
#: the subject is last since it is free text (git stops it at a NUL).
_FORMAT = "--format=%H%x00%at%x00%ct%x00%D%x00%s"
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TIME = re.compile(r"-?[0-9]{1,19}")
_NEWLINE_SPLIT = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Commit:
    hash: str  # full hash: 40 hex digits (64 in a sha256 repository)
    author_time: float  # Unix seconds (%at): when the change was written
    commit_time: float  # Unix seconds (%ct): when it was committed (landed, for a cherry-pick)
    subject: str  # one line, no control characters, at most MAX_SUBJECT characters
    #: The repository is shallow and this commit is the oldest one fetched: the
    #: file may have last changed in an older commit that is not in the clone.
    shallow: bool

    def as_dict(self) -> dict[str, str]:
        """Strings for JSON and events: `commit`, `commit_time` (its author time,
        as `git log` shows it, ISO 8601 UTC to the second: `2026-11-30T06:12:00Z`; left out
        if not representable), `commit_subject` (if not empty), and
        `commit_shallow: "true"` only when shallow."""
        fields = {
            "commit": self.hash,
            "commit_time": _iso8601(self.author_time),
            "commit_subject": self.subject,
            "commit_shallow": "true" if self.shallow else "",
        }
        return {k: v for k, v in fields.items() if v}


def _iso8601(seconds: float) -> str:
    """Unix seconds as `2026-11-30T06:12:00Z` ("" past year 9999 or before 1)."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return ""


def last_commit(path: Path, *, timeout_s: float = 5.0) -> Commit | None:
    """The commit that last changed the file at `path` (through any symlinks), or
    None: not a file in a git work tree, git missing, untracked, or git failed
    or took longer than `timeout_s` (logged, never raised)."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before 3.13)
        return None
    folder = target.parent
    if not target.is_file() or not _inside_git(folder):
        return None
    cmd = [
        GIT, "--no-pager", "--literal-pathspecs",
        "-c", "safe.directory=*", "-c", "log.follow=false", "-c", "log.showSignature=false",
        "-C", str(folder),
        "log", "-1", "-z", "--name-status", "--no-ext-diff", "--no-textconv",
        "--decorate-refs=refs/..",  # no ref name can match: only "grafted" is left
        _FORMAT, "--", target.name,
    ]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              env=_git_env(), timeout=timeout_s, check=False)
    except FileNotFoundError:
        _warn_once("git missing", "git not found: model provenance unknown", path)
        return None
    except subprocess.TimeoutExpired:
        _warn_once("git timeout", f"git log took more than {timeout_s:g}s: provenance unknown",
                   path)
        return None
    except OSError as exc:  # not executable, out of processes...
        _warn_once("git failed", f"git could not run: {exc}", path)
        return None
    if done.returncode != 0:
        log.debug("git log failed", extra={
            "path": str(path), "reason": done.stderr.decode(errors="replace")[-500:].strip()})
        return None
    return _parse(done.stdout)


def _inside_git(folder: Path) -> bool:
    """Whether a `.git` (folder or file) is in `folder` or one of its ancestors."""
    return any(os.path.exists(os.path.join(p, ".git")) for p in (folder, *folder.parents))


def _git_env() -> dict[str, str]:
    """The environment without the caller's GIT_* variables (GIT_DIR and the like
    would make git answer about another repository), with no locks, no prompts,
    no network fetch of missing objects (partial clones, git 2.44+), C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", GIT_NO_LAZY_FETCH="1",
               LC_ALL="C")
    return env


def _parse(out: bytes) -> Commit | None:
    """`log -1 -z --name-status` output: the formatted commit, NUL, then (unless
    it is a merge) a newline and `<status> NUL <path> NUL`. Empty output: the path
    was never committed; status D: the last commit removed it (now untracked)."""
    fields = out.split(b"\0", 4)
    if len(fields) != 5:
        return None
    commit_hash, author_time, commit_time, decorations = (f.decode("ascii", "replace")
                                                          for f in fields[:4])
    subject, _, changes = fields[4].partition(b"\0")
    if (not _HASH.fullmatch(commit_hash) or not _TIME.fullmatch(author_time)
            or not _TIME.fullmatch(commit_time)):
        log.debug("git log output not understood", extra={"output": out[:300].decode(
            errors="replace")})
        return None
    if changes.lstrip(b"\n").startswith(b"D\0"):
        return None
    return Commit(
        hash=commit_hash,
        author_time=float(author_time),
        commit_time=float(commit_time),
        subject=_one_line(subject.decode("utf-8", "replace")),
        shallow="grafted" in decorations.split(", "),
    )


def _one_line(text: str) -> str:
    """The first line of `text` (git has already joined the first paragraph's lines
    with spaces), tabs as spaces, other control characters as U+FFFD, at most
    MAX_SUBJECT characters."""
    line = _NEWLINE_SPLIT.split(text, maxsplit=1)[0]
    line = line.replace("\t", " ")
    line = "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in line).strip()
    if len(line) > MAX_SUBJECT:
        line = line[:MAX_SUBJECT - 3] + "..."
    return line


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, message: str, path: Path) -> None:
    """A warning the first time this kind of problem happens, debug after that."""
    with _warned_lock:
        first = kind not in _warned
        _warned.add(kind)
    log.log(logging.WARNING if first else logging.DEBUG, message, extra={"path": str(path)})
