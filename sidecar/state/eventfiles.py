"""The event log's files on disk: the current one, the rotated ones, rotation.

`events.jsonl` is appended to; when it is full it becomes `events.jsonl.1`, the
previous `.1` becomes `.2`, and so on; files numbered `keep` and above are
deleted. Rotation is crash-safe: the new current file is created under a
temporary name first, the current file is only ever renamed (never copied or
deleted), so after a crash at any instant every acknowledged event is in a
file that `rotated()` or the current name finds, and `finish_rotation` (at
open) completes a rotation a crash interrupted.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO

from sidecar.state.store import fsync_directory

_CHUNK = 64 * 1024


def _next_path(path: Path) -> Path:
    """Where the next current file is created during a rotation (always empty)."""
    return path.with_name(f".{path.name}.next")


def numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def rotated(path: Path) -> list[tuple[int, Path]]:
    """The rotated files that exist, oldest (highest number) first."""
    prefix = path.name + "."
    found: list[tuple[int, Path]] = []
    if not path.parent.is_dir():
        return found
    for entry in path.parent.iterdir():
        suffix = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        if suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
            found.append((int(suffix), entry))
    return sorted(found, reverse=True)


def all_files(path: Path) -> list[Path]:
    """Every file of the log, oldest first: the rotated ones, then the current one."""
    files = [p for _, p in rotated(path)]
    return [*files, path] if path.exists() else files


def open_all(path: Path) -> list[BinaryIO]:
    """Open every file of the log, oldest first (a file that vanished meanwhile is
    left out). Open handles keep reading the same bytes across later renames."""
    handles: list[BinaryIO] = []
    try:
        for file in all_files(path):
            with contextlib.suppress(FileNotFoundError):
                handles.append(file.open("rb"))
    except BaseException:
        for handle in handles:
            handle.close()
        raise
    return handles


def open_for_append(path: Path) -> io.FileIO:
    """Unbuffered and O_APPEND: a failed write leaves nothing queued in a buffer,
    and after the file is cut back the next line goes right after the last one."""
    return path.open("ab", buffering=0)


def rotate(path: Path, keep: int) -> io.FileIO:
    """Make `path` the newest rotated file and return an empty new current file
    (opened for appending). Raises OSError; the old current file keeps every
    event it had, under its old name or as `.1`."""
    fresh = _next_path(path)
    fresh.unlink(missing_ok=True)
    handle = open_for_append(fresh)
    try:
        for n, old in rotated(path):
            if n >= keep:
                old.unlink(missing_ok=True)
        for n in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(numbered(path, n), numbered(path, n + 1))
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, numbered(path, 1))
        os.rename(fresh, path)
        fsync_directory(path.parent)
    except BaseException:
        handle.close()
        raise
    return handle


def finish_rotation(path: Path) -> None:
    """Complete a rotation a crash interrupted: the temporary new file becomes the
    current one if that is missing, else it is removed (it is always empty)."""
    fresh = _next_path(path)
    if not fresh.exists():
        return
    if path.exists():
        fresh.unlink()
    else:
        os.rename(fresh, path)
    fsync_directory(path.parent)


def cut_torn_tail(path: Path) -> int:
    """Cut a last line that has no final newline (torn by a crash, so never
    acknowledged); return the number of bytes cut."""
    if not path.exists():
        return 0
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        position = end
        while position > 0:
            start = max(0, position - _CHUNK)
            f.seek(start)
            chunk = f.read(position - start)
            if position == end and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        f.truncate(position)
        os.fsync(f.fileno())
    return end - position


def lines(data: bytes) -> list[bytes]:
    """The lines of a file's bytes, without their newlines (a blank line is b"")."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return pieces


def first_line(handle: BinaryIO) -> bytes:
    """The first line of an open file, leaving the file at its start."""
    handle.seek(0)
    line = handle.readline()
    handle.seek(0)
    return line
