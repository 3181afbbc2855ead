"""A real Hub-compatible server for the `hf://` source tests: olah (PyPI `olah`), run offline over local git repos.

olah serves `<mirrors>/<models|datasets>/<org>/<name>` (plain git repositories; no LFS needed) through the
Hugging Face Hub's HTTP API: repo info at a branch, tag or commit (`/api/models/<repo>/revision/<rev>`), the
tree listing with sizes and git blob ids, and `/resolve/<commit>/<file>` downloads, which huggingface_hub
uses unchanged. It runs from its own venv (hack/venv-olah.sh: it pulls newer packages than the project pins).
What it cannot do: gating. Local mirrors are always ungated and it checks no token, so tests of tokens and of
401/403 answers put tests/trainer/hub_gate.py in front of it (docs/hub.md says what that leaves untested).

`git_repo` makes a seed repository from a folder of files (one commit per call, a tag optional), so a test can
move a branch after a tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "fto-test",
    "GIT_AUTHOR_EMAIL": "fto-test@example.invalid",
    "GIT_COMMITTER_NAME": "fto-test",
    "GIT_COMMITTER_EMAIL": "fto-test@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def olah_venv() -> Path:
    """The olah venv, made once by hack/venv-olah.sh (cached under $FTO_CACHE; a failed install fails the test)."""
    done = subprocess.run([str(REPO / "hack/venv-olah.sh")], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True, text=True).stdout


def commit_files(repo: Path, files: Path | dict[str, bytes], message: str, tag: str | None = None) -> str:
    """Replace the work tree of `repo` (created on first use, branch main) by `files` (a folder or name -> bytes),
    commit, tag it when asked; returns the commit hash."""
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for child in repo.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if isinstance(files, Path):
        shutil.copytree(files, repo, dirs_exist_ok=True)
    else:
        for name, data in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", message)
    if tag:
        _git(repo, "tag", tag)
    return _git(repo, "rev-parse", "HEAD").strip()


def cached_model_repo(folder: Path, repo: str, tag: str) -> Path:
    """A mirrors folder holding `models/<repo>` made from `folder` (one commit, tagged `tag`), built once and kept
    under $FTO_CACHE/hub-seeds, keyed by the folder's name, its files' names and sizes: a 500 MB model is committed
    once, not at every test run."""
    listing = "\n".join(f"{p.relative_to(folder)} {p.stat().st_size}" for p in sorted(folder.rglob("*")) if p.is_file())
    key = hashlib.sha256(f"{folder.name}\n{repo}\n{tag}\n{listing}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache/finetune-operator")) / "hub-seeds"
    mirrors = cache / key
    if (mirrors / ".done").is_file():
        return mirrors
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (mirrors / ".done").is_file():
            shutil.rmtree(mirrors, ignore_errors=True)
            commit_files(mirrors / "models" / repo, folder, f"{repo} from {folder.name}", tag=tag)
            (mirrors / ".done").write_text(key)
    return mirrors


@contextlib.contextmanager
def olah_server(
    mirrors: Path | list[Path], workdir: Path, ready_seconds: float = 120, host: str = "127.0.0.1"
) -> Iterator[str]:
    """olah on `host` (a free port; the e2e tier: the node bridge's gateway, which pods reach), offline, serving the
    repos under `mirrors`; yields its URL when it answers."""
    venv = olah_venv()
    roots = ", ".join(f'"{m}"' for m in (mirrors if isinstance(mirrors, list) else [mirrors]))
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "{host}"\n'
        f"port = {port}\n"
        f'repos-path = "{workdir / "repos"}"\n'
        f"mirrors-path = [{roots}]\n"
        "[accessibility]\n"
        "offline = true\n"
    )
    url = f"http://{host}:{port}"
    log_path = workdir / "olah.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(venv / "bin/olah-cli"), "-c", str(config)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"olah exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers: up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"olah not answering at {url}: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
