"""On-disk cache of a base model's lm-eval results, so a sweep evaluates the untouched model once.

One JSON file per key. The file holds its key, so a file is only used when every field matches; it is written
to a temporary file and renamed, so jobs of a sweep running in parallel never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump({"key": key, "results": results}, stream, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
