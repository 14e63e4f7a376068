"""Whether the Hugging Face Hub can be used for kernels, and from which organisations.

Decided once per process, cheaply: HF_HUB_OFFLINE first, then a TCP connect with a short timeout.
Hub kernels are code that runs on the benchmark host, so only trusted organisations are loaded.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
DEFAULT_TRUSTED_ORGS = ("kernels-community",)


@functools.cache
def offline_reason() -> str | None:
    """None when the hub answers; otherwise why kernels must come from elsewhere."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"hub unreachable ({host}: {exc.strerror or type(exc).__name__})"
    return None


def trusted_orgs() -> tuple[str, ...]:
    raw = os.environ.get("STAGEBENCH_TRUSTED_HUB_ORGS")
    if raw is None:
        return DEFAULT_TRUSTED_ORGS
    return tuple(org.strip() for org in raw.split(",") if org.strip())


def untrusted_reason(repo_id: str) -> str | None:
    org = repo_id.split("/", 1)[0]
    if org in trusted_orgs():
        return None
    return (
        f"hub org {org!r} is not trusted (STAGEBENCH_TRUSTED_HUB_ORGS={','.join(trusted_orgs())})"
    )


def kernel_reason(repo_id: str) -> str | None:
    """Why the hub kernel `repo_id` cannot be used here, or None."""
    return untrusted_reason(repo_id) or offline_reason()
