"""The run directory's files, written so that a kill at any moment leaves the old file or the new one.

`manifest.json` and `results.json` are replaced atomically (temp file in the same directory, fsync, rename);
`metrics.jsonl` gets one whole line per write, flushed, so a kill loses at most the step it hit.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
CONTROL_VECTORS = "control_vectors.safetensors"
MODEL_DIR = "model"


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual permissions
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import torch

    # torch's own version string: it names the build (2.9.1+cu128, 2.13.0+cpu), which its wheel's metadata omits
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "datasets", "lm-eval", "hydra-core", "unlearn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["unlearn_git_sha"] = _git_sha()
    return found


def _git_sha() -> str:
    """The checkout's commit; "unknown" for an installed package (whose folder may lie inside another
    repository, e.g. a .venv in a clone, whose commit is not this code's)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class Manifest:
    """manifest.json: versions, device, seed, times and status (`running`, `completed`, `failed`, `interrupted`)."""

    def __init__(self, run_dir: Path, **fields):
        self.path = Path(run_dir) / MANIFEST
        self.data = {"status": "running", "started": now(), "ended": None, **fields, "versions": versions()}
        self.save()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.update(status=status, ended=now(), error=error)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


class MetricsLog:
    """metrics.jsonl, one flushed line per step; created at the first step, so a run that fails before
    training leaves no empty file behind."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS
        self.file = None

    def write(self, record: dict) -> None:
        if self.file is None:
            self.file = open(self.path, "w", encoding="utf-8")  # a rerun of a failed job starts afresh
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def save_model_atomic(model, tokenizer, target: Path) -> None:
    """Write the model to a temporary sibling directory, then move it into place when complete."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.chmod(staging, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def outcome_recorded(manifest: Manifest, out_of_memory_fix: str, on_end=lambda status: None):
    """Inside runs a run or an audit; its manifest then says how it ended, however it ended: `completed`,
    `interrupted` (SIGINT or SIGTERM, see signals_interrupt) or `failed` with the error. Out of memory is raised
    again as an UnlearnError saying `out_of_memory_fix`. `on_end(status)` (closing logs, trackers) runs first."""
    import torch

    from unlearn.errors import UnlearnError

    status, error = "failed", None
    with signals_interrupt():
        try:
            yield
            status = "completed"
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted (SIGINT/SIGTERM)"
            raise
        except UnlearnError as exc:
            error = str(exc)
            raise
        except torch.OutOfMemoryError:
            error = f"out of memory: {out_of_memory_fix}"
            raise UnlearnError(error) from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            on_end(status)
            manifest.finish(status, error=error)


@contextmanager
def signals_interrupt():
    """Inside, SIGTERM and SIGINT raise KeyboardInterrupt, so a run ends as `interrupted`: SIGINT too, because a
    process started from a background job inherits it as ignored and Python then installs no handler of its own."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
