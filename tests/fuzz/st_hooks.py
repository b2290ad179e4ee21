"""Schemathesis hooks for tests/fuzz (loaded through SCHEMATHESIS_HOOKS by ``st run``).

Teaches the generator the Agent schema's own string formats, and adds one check: the secret planted
by the test (``PARALLAX_FUZZ_SECRET``) never appears in a response, body or headers.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

SECRET = os.environ.get("PARALLAX_FUZZ_SECRET", "")

schemathesis.openapi.format(
    "memory-quantity", st.sampled_from(["512m", "1g", "2g", "1.5g", "512Mi", "2Gi", "64m", "lots", "-1g", "0"])
)
schemathesis.openapi.format("cpu-quantity", st.sampled_from(["0.5", "1.0", "2", "500m", "fast", "0"]))
schemathesis.openapi.format(
    "bind-mount",
    st.sampled_from(
        [
            "/host/data:/data:ro",
            "/host/data:/data",
            "/host/data/../../etc:/x:ro",
            "/var/run/docker.sock:/sock",
            "/etc:/etc:ro",
            "relative:/x",
            "/srv/elsewhere:/x:ro",
            "/host/data:/workspace:ro",
        ]
    ),
)


@schemathesis.check
def no_secret_in_response(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    if not SECRET:
        return None
    headers = " ".join(" ".join(values) for values in response.headers.values())
    if SECRET.encode() in (response.content or b"") or SECRET in headers:
        raise AssertionError(f"the planted secret appears in the response to {case.method} {case.path}")
    return None


@schemathesis.check
def no_server_fault(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """5xx other than 503 (the fuzzed server runs without a Docker daemon, which it must say) is a bug."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{case.method} {case.path} answered {response.status_code}")
    return None
