"""Whether the Hugging Face Hub can be used for kernels, and from which organisations.

The one place every optimization asks: the environment first (HF_HUB_OFFLINE or
TRANSFORMERS_OFFLINE, as huggingface_hub reads them), then one HTTP request with a short timeout,
asked once per process and endpoint. Hub kernels are code that runs on the benchmark host, so only
trusted organisations are loaded.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 3.0
DEFAULT_TRUSTED_ORGS = ("kernels-community",)
_TRUE = {"1", "ON", "YES", "TRUE"}


def env_offline_reason() -> str | None:
    """The variable that puts the hub offline; None if none does."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var, "")
        if value.upper() in _TRUE:
            return f"{var}={value}"
    return None


def endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # no huggingface_hub, or a broken one: fall back to what it would read
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=4)
def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub at `url` answers within timeout_s, else why not."""
    request = urllib.request.Request(f"{url.rstrip('/')}/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # an error status is still an answer from the hub
    except Exception as exc:  # refused, unresolvable, timed out, proxy tunnel refused ...
        return f"hub not reachable within {timeout_s:g} s: {getattr(exc, 'reason', exc)}"


def offline_reason() -> str | None:
    """None when the hub can be used; otherwise why kernels must come from elsewhere."""
    return env_offline_reason() or probe(endpoint())


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
