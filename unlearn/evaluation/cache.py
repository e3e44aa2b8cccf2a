"""On-disk cache of a base model's lm-eval results, so a sweep evaluates the untouched model once.

One JSON file per key. The key identifies the weights (`model_identity`: the hub commit, or the files of a local
directory by name, size and modification time) and everything else that changes the numbers (suite._cache_key:
dtype, device type, batch size, task definitions and documents, versions), so a model rewritten in place, an
edited task file or an upgraded lm-eval is evaluated again. The file holds its key, so a file is only used when
every field matches; it is written to a temporary file and renamed, so jobs of a sweep running in parallel
never read half a file.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from unlearn import rundir


def cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"{digest}.json"


def read(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached results for `key`, or None (no file, another key, or an unreadable file)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != json.loads(json.dumps(key)):  # compare as JSON: tuples come back as lists
        return None
    return stored["results"]


def write(path: Path, key: dict[str, Any], results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text_atomic(path, json.dumps({"key": key, "results": results}, indent=1, sort_keys=True))


def model_identity(name_or_path: str, *, seed: int) -> dict[str, Any] | None:
    """What identifies a model's weights, or None when nothing does (then the model is always evaluated).

    - `tiny://...`: built in code from the seed (and the transformers version that builds it);
    - `embedded://...`: the GGUF file it is converted from, by name, size and modification time;
    - a local directory: every file in it, by relative name, size and modification time;
    - a hub id: the commit the local hub cache resolves it to (None if it is not in the cache).
    """
    from unlearn import models

    if name_or_path.startswith(models.TINY_PREFIX):
        return {"built": name_or_path, "seed": seed, "transformers": _version("transformers")}
    if name_or_path.startswith(models.EMBEDDED_PREFIX):
        folder, gguf_file = models._smollm2_gguf()
        return {"embedded": name_or_path, "files": _file_stats(Path(folder), [Path(folder) / gguf_file]),
                "gguf": _version("gguf"), "transformers": _version("transformers")}  # they dequantize it
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return {"directory": str(local.resolve()), "files": _file_stats(local, files)}
    return _hub_identity(name_or_path)


def _file_stats(root: Path, files: list[Path]) -> list[list]:
    return [[str(p.relative_to(root)), (s := p.stat()).st_size, s.st_mtime_ns] for p in files]


def _hub_identity(repo_id: str) -> dict[str, Any] | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(found, str):  # not cached (or cached as missing): nothing says which weights these are
        return None
    return {"hub": repo_id, "commit": Path(found).parent.name}  # .../snapshots/<commit>/config.json


def versions() -> dict[str, str]:
    return {name: _version(name) for name in ("lm_eval", "transformers", "torch", "datasets")}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
