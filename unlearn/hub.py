"""Fail fast when the Hugging Face hub can't be reached, instead of after the client's retry storm."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


def offline() -> bool:
    return any(os.environ.get(var, "") not in ("", "0") for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.cache
def reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint (HF_ENDPOINT or huggingface.co), answered within `timeout_s`."""
    if offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def model_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
