"""Provenance from git: the commit that last changed a model file, asked of the
real `git` on temporary repositories (plain clones, shallow clones, git-sync's
worktree-and-symlink layout, another owner's repository, hostile messages)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sidecar.source.provenance import MAX_SUBJECT, Commit, last_commit

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
MODEL = "tiny/1/model.onnx"
CONFIG = "tiny/config.pbtxt"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str, when: int = T0, input: bytes | None = None) -> str:
    """Run git in `repo` as a fixed identity at fixed times (committed `when`+60s),
    away from the host's global and system configuration."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Author", "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Committer", "GIT_COMMITTER_EMAIL": "committer@example.com",
        "GIT_AUTHOR_DATE": f"@{when} +0000", "GIT_COMMITTER_DATE": f"@{when + 60} +0000",
    }
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, input=input,
                          capture_output=True, check=True)
    return done.stdout.decode().strip()


def write(repo: Path, name: str, data: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(data)


def commit(repo: Path, message: str, when: int, files: dict[str, str] | None = None) -> str:
    """Write these files (name: content), commit everything, return the hash."""
    for name, data in (files or {}).items():
        write(repo, name, data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--cleanup=verbatim", "-F", "-", when=when,
        input=message.encode())
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path, *init: str) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main", *init)
    return path


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository of four commits: the model is added, then changed, then only
    the config changes twice (HEAD did not touch the model)."""
    repo = new_repo(tmp_path / "src")
    hashes = [
        commit(repo, "add tiny", T0, {MODEL: "v1", CONFIG: "a"}),
        commit(repo, "retrain tiny", T0 + 1000, {MODEL: "v2"}),
        commit(repo, "config b", T0 + 2000, {CONFIG: "b"}),
        commit(repo, "config c", T0 + 3000, {CONFIG: "c"}),
    ]
    return repo, hashes


def test_the_commit_that_last_touched_the_file_not_head(history: tuple[Path, list[str]]
                                                         ) -> None:
    repo, hashes = history
    git(repo, "branch", "grafted")  # a ref name is not taken for the shallow mark
    found = last_commit(repo / MODEL)
    assert found == Commit(hash=hashes[1], author_time=float(T0 + 1000),
                           commit_time=float(T0 + 1060), subject="retrain tiny", shallow=False)
    assert found.as_dict() == {
        "commit": hashes[1],
        "commit_time": "2023-11-14T22:30:00Z",  # the author time, as git log shows
        "commit_subject": "retrain tiny",
    }
    assert last_commit(repo / CONFIG) == Commit(hashes[3], T0 + 3000.0, T0 + 3060.0,
                                                "config c", False)
    # a relative path, and a file deeper than the folder git is run in
    assert last_commit(Path(os.path.relpath(repo / MODEL))) == found


def test_the_callers_git_variables_are_ignored(history: tuple[Path, list[str]],
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    repo, hashes = history
    other = new_repo(tmp_path / "other")
    commit(other, "elsewhere", T0, {MODEL: "x"})
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    found = last_commit(repo / MODEL)
    assert found is not None and found.hash == hashes[1]


def test_a_revert_is_a_commit_of_its_own(history: tuple[Path, list[str]]) -> None:
    repo, hashes = history
    git(repo, "revert", "--no-edit", hashes[1], when=T0 + 5000)
    found = last_commit(repo / MODEL)
    assert found is not None
    assert found.hash == git(repo, "rev-parse", "HEAD") not in hashes
    assert found.subject == 'Revert "retrain tiny"'
    assert (found.author_time, found.commit_time) == (T0 + 5000, T0 + 5060)
    assert (repo / MODEL).read_text() == "v1"


def test_untracked_missing_and_removed_files_have_no_commit(
        history: tuple[Path, list[str]]) -> None:
    repo, _ = history
    write(repo, "tiny/2/model.onnx", "new")  # never added
    assert last_commit(repo / "tiny/2/model.onnx") is None
    git(repo, "add", "tiny/2/model.onnx")  # added, not committed
    assert last_commit(repo / "tiny/2/model.onnx") is None
    assert last_commit(repo / "tiny/3/model.onnx") is None  # no such file
    assert last_commit(repo / "tiny/1") is None  # a folder
    # removed from git but left on disk: git log names the removal; that is no answer
    git(repo, "rm", "-q", "--cached", MODEL)
    git(repo, "commit", "-q", "-m", "stop tracking the model")
    assert (repo / MODEL).is_file()
    assert last_commit(repo / MODEL) is None


def test_not_a_git_tree_starts_no_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """A fake `git` first on PATH leaves a mark when run: outside git it is never
    run; inside a folder with a `.git` it is (so the check is not vacuous)."""
    assert not any((p / ".git").exists() for p in (tmp_path, *tmp_path.parents))
    bin_dir, mark = tmp_path / "bin", tmp_path / "git-was-run"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\necho run >> '{mark}'\nexit 1\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    write(tmp_path, "plain/" + MODEL, "v1")

    assert last_commit(tmp_path / "plain" / MODEL) is None
    assert not mark.exists()

    (tmp_path / "plain" / ".git").mkdir()
    assert last_commit(tmp_path / "plain" / MODEL) is None
    assert mark.read_text() == "run\n"


def test_git_missing_gives_none_and_one_warning(history: tuple[Path, list[str]],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    repo, _ = history
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert last_commit(repo / MODEL) is None
    caplog.clear()
    assert last_commit(repo / MODEL) is None
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # once is enough


def test_slow_git_is_cut_by_the_timeout(history: tuple[Path, list[str]], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A `git` that blocks for ever (opening a FIFO nobody writes to) is killed."""
    repo, _ = history
    fifo, bin_dir = tmp_path / "fifo", tmp_path / "bin"
    os.mkfifo(fifo)
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\nexec cat '{fifo}'\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert last_commit(repo / MODEL, timeout_s=0.2) is None


def publish(root: Path, sha: str, link: str = "repo") -> None:
    """What git-sync does for a new hash: a detached worktree `.worktrees/<sha>`
    whose `.git` file points back relatively, then a relative symlink swapped in."""
    git(root, "worktree", "add", "-q", "--force", "--detach", f".worktrees/{sha}", sha)
    (root / ".worktrees" / sha / ".git").write_text(f"gitdir: ../../.git/worktrees/{sha}\n")
    (root / "tmp-link").symlink_to(f".worktrees/{sha}")
    (root / "tmp-link").rename(root / link)


def sync_root(root: Path, source: Path, depth: int = 0) -> str:
    """git-sync's repository under `--root`: fetch the branch, return its hash."""
    new_repo(root)
    git(root, "fetch", "-q", *([f"--depth={depth}"] if depth else []), f"file://{source}",
        "main")
    return git(root, "rev-parse", "FETCH_HEAD")


def test_git_sync_layout_through_the_link(history: tuple[Path, list[str]], tmp_path: Path
                                          ) -> None:
    src, hashes = history
    root = tmp_path / "git"
    head = sync_root(root, src)
    publish(root, head)
    assert (root / ".worktrees" / head / ".git").is_file()
    # the consumer mounts the volume elsewhere: relative links and gitdir still hold
    mounted = tmp_path / "mnt" / "models"
    mounted.parent.mkdir()
    root.rename(mounted)
    found = last_commit(mounted / "repo" / MODEL)
    assert found is not None
    assert (found.hash, found.subject, found.shallow) == (hashes[1], "retrain tiny", False)
    # and through an absolute link from outside the git tree to a folder inside
    (tmp_path / "tiny").symlink_to(mounted / "repo" / "tiny")
    assert last_commit(tmp_path / MODEL) == found

    # the next publish: the same path through the link now answers for the new tree
    newest = commit(src, "retrain again", T0 + 6000, {MODEL: "v3"})
    git(mounted, "fetch", "-q", f"file://{src}", "main")
    publish(mounted, newest)
    found = last_commit(mounted / "repo" / MODEL)
    assert found is not None and found.hash == newest
    # the old worktree removed after the swap: its files have no answer any more
    git(mounted, "worktree", "remove", "--force", f".worktrees/{head}")
    assert last_commit(mounted / ".worktrees" / head / MODEL) is None


def test_shallow_clone_says_the_answer_may_be_wrong(history: tuple[Path, list[str]],
                                                    tmp_path: Path) -> None:
    src, hashes = history
    shallow = tmp_path / "depth1"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{src}", str(shallow))
    found = last_commit(shallow / MODEL)
    # the only fetched commit is named for every file: git cannot know better
    assert found == Commit(hashes[3], T0 + 3000.0, T0 + 3060.0, "config c", shallow=True)
    assert found.as_dict()["commit_shallow"] == "true"

    # three commits fetched: the config's last change is among them, and not the
    # oldest, so it is exact though the clone is shallow
    deeper = tmp_path / "depth3"
    git(tmp_path, "clone", "-q", "--depth", "3", f"file://{src}", str(deeper))
    assert git(deeper, "rev-parse", "--is-shallow-repository") == "true"
    found = last_commit(deeper / CONFIG)
    assert found is not None and (found.hash, found.shallow) == (hashes[3], False)
    assert "commit_shallow" not in found.as_dict()
    # the model's is the oldest fetched commit: right here, but git cannot tell
    found = last_commit(deeper / MODEL)
    assert found is not None and (found.hash, found.shallow) == (hashes[1], True)


def test_shallow_git_sync_worktree(history: tuple[Path, list[str]], tmp_path: Path) -> None:
    """git-sync's default --depth=1: the `shallow` file is in the common git dir."""
    src, hashes = history
    root = tmp_path / "git"
    head = sync_root(root, src, depth=1)
    publish(root, head)
    found = last_commit(root / "repo" / MODEL)
    assert found is not None and (found.hash, found.shallow) == (hashes[3], True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_repository_owned_by_another_uid(history: tuple[Path, list[str]]) -> None:
    repo, hashes = history
    subprocess.run(["chown", "-R", "65533:65533", str(repo)], check=True)
    plain = subprocess.run(["git", "-C", str(repo), "log", "-1"], capture_output=True,
                           text=True, env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull})
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr  # the control
    found = last_commit(repo / MODEL)
    assert found is not None and found.hash == hashes[1]


def test_a_model_file_that_is_a_symlink_is_answered_for_its_target(
        history: tuple[Path, list[str]]) -> None:
    repo, _ = history
    (repo / "tiny" / "2").mkdir()
    (repo / "tiny" / "2" / "model.onnx").symlink_to("../1/model.onnx")
    commit(repo, "version 2 is version 1", T0 + 4000)
    changed = commit(repo, "retrain v1", T0 + 5000, {MODEL: "v4"})
    found = last_commit(repo / "tiny/2/model.onnx")
    assert found is not None and found.hash == changed  # the content served changed there


def test_long_subject_is_cut(history: tuple[Path, list[str]]) -> None:
    repo, _ = history
    long = "retrain " + "x" * 400
    commit(repo, long + "\n\nbody\n", T0 + 4000, {MODEL: "v5"})
    found = last_commit(repo / MODEL)
    assert found is not None
    assert len(found.subject) == MAX_SUBJECT == 200
    assert found.subject == long[:197] + "..."


def test_hostile_subject_is_one_clean_line(history: tuple[Path, list[str]]) -> None:
    repo, _ = history
    message = ("fix\tit \x1b[31mred\x1b[0m\u2028forged: line\rmore\n"
               "same paragraph\n\nbody \x1b[2J\n")
    commit(repo, message, T0 + 4000, {MODEL: "v6"})
    found = last_commit(repo / MODEL)
    assert found is not None
    assert found.subject == "fix it \ufffd[31mred\ufffd[0m"


def test_a_nul_in_the_message_ends_the_subject(history: tuple[Path, list[str]]) -> None:
    """git refuses to commit a NUL; a commit object written by other means can hold one."""
    repo, hashes = history
    write(repo, MODEL, "v7")
    git(repo, "add", MODEL)
    tree = git(repo, "write-tree")
    raw = (f"tree {tree}\nparent {hashes[3]}\n"
           f"author A <a@example.com> {T0 + 4000} +0000\n"
           f"committer C <c@example.com> {T0 + 4060} +0000\n\n").encode()
    raw += b"before\0after\x00\ninjected\n"
    forged = git(repo, "hash-object", "-t", "commit", "-w", "--literally", "--stdin",
                 input=raw)
    git(repo, "update-ref", "HEAD", forged)
    assert last_commit(repo / MODEL) == Commit(forged, T0 + 4000.0, T0 + 4060.0, "before",
                                               False)


def test_sha256_repository(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "sha256", "--object-format=sha256")
    made = commit(repo, "add tiny", T0, {MODEL: "v1"})
    found = last_commit(repo / MODEL)
    assert found is not None and found.hash == made and len(made) == 64


def test_a_file_name_that_looks_like_a_pathspec(tmp_path: Path) -> None:
    """`:(glob)*` or `*` are names, not patterns: no other file's commit is named."""
    repo = new_repo(tmp_path / "magic")
    commit(repo, "plain", T0, {"a/model.onnx": "a"})
    write(repo, "a/*", "star")
    assert last_commit(repo / "a" / "*") is None  # untracked, though `*` matches model.onnx
    made = commit(repo, "star", T0 + 10, {"a/:(glob)x": "x"})
    commit(repo, "later", T0 + 20, {"a/model.onnx": "b"})
    found = last_commit(repo / "a" / ":(glob)x")
    assert found is not None and found.hash == made


def test_unreadable_or_looping_paths_give_none(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    assert last_commit(tmp_path / "loop" / "model.onnx") is None
    assert stat.S_ISLNK(os.lstat(tmp_path / "loop").st_mode)


def test_as_dict_of_an_absurd_time_does_not_raise() -> None:
    odd = Commit("a" * 40, 1e15, -1e15, "", shallow=False)
    assert odd.as_dict() == {"commit": "a" * 40}
    assert Commit("b" * 40, 0.0, 0.0, "s", True).as_dict() == {
        "commit": "b" * 40, "commit_time": "1970-01-01T00:00:00Z", "commit_subject": "s",
        "commit_shallow": "true"}
