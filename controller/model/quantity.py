"""Memory and CPU quantities: the one place that knows their syntax.

Memory follows Docker's CLI (``512m``, ``1g``, ``1.5g``: binary units, case-insensitive) and
Kubernetes' binary suffixes (``512Mi``, ``2Gi``); a bare number is bytes. CPU is a number of cores
(``0.5``, ``1.0``, ``2``) or Kubernetes millicores (``"500m"``).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses anything smaller
INT64_MAX = 2**63 - 1  # Docker's Memory and NanoCpus are Go int64s: a larger number is refused as JSON
MAX_MEMORY_BYTES = INT64_MAX
MIN_CPU = 0.01  # Docker's smallest NanoCpus step that it accepts
MAX_CPU = INT64_MAX // 1_000_000_000  # whole cores whose NanoCpus still fit an int64

_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "ki": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mi": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gi": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "ti": 1024**4,
}
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m?)\s*$")


class QuantityError(ValueError):
    """A quantity that cannot be turned into a limit."""


def parse_memory(value: object) -> int:
    """Bytes for a memory quantity; raises QuantityError rather than ever meaning "no limit"."""
    if isinstance(value, bool):
        raise QuantityError(f"memory must be a size like 512m or 1g, not {value!r}")
    if isinstance(value, int):
        amount, unit = Decimal(value), ""
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"memory must be a finite size, not {value!r}")
        amount, unit = Decimal(value), ""
    elif isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if match is None or match.group(2).lower() not in _MEMORY_UNITS:
            raise QuantityError(
                f"memory {value!r} is not a size: use bytes or a number with b, k, m, g, t, Ki, Mi, Gi, Ti"
            )
        amount, unit = Decimal(match.group(1)), match.group(2).lower()
    else:
        raise QuantityError(f"memory must be a string like 512m or a number of bytes, not {type(value).__name__}")
    size = int(amount * _MEMORY_UNITS[unit])
    if size <= 0:
        raise QuantityError(f"memory {value!r} must be greater than zero")
    if size < MIN_MEMORY_BYTES:
        raise QuantityError(f"memory {value!r} is below Docker's minimum of 6m")
    if size > MAX_MEMORY_BYTES:
        raise QuantityError(f"memory {value!r} is more than Docker can take (at most 2^63-1 bytes, about 8 EiB)")
    return size


def parse_cpu(value: object) -> float:
    """Cores for a CPU quantity (``"500m"`` is 0.5)."""
    if isinstance(value, bool):
        raise QuantityError(f"cpu must be a number of cores like 0.5, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise QuantityError(f"cpu must be a finite number of cores, not {value!r}")
        cores = float(value)
    elif isinstance(value, str):
        match = _CPU_RE.match(value)
        if match is None:
            raise QuantityError(f'cpu {value!r} is not a quantity: use cores (0.5, 2) or millicores ("500m")')
        cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    else:
        raise QuantityError(f"cpu must be a number of cores, not {type(value).__name__}")
    if cores <= 0:
        raise QuantityError(f"cpu {value!r} must be greater than zero")
    if cores < MIN_CPU:
        raise QuantityError(f"cpu {value!r} is below Docker's minimum of 0.01 cores")
    if cores > MAX_CPU:
        raise QuantityError(f"cpu {value!r} is more than Docker can take (its NanoCpus must fit in 64 bits)")
    return cores


def nano_cpus(value: object) -> int:
    """Docker's ``NanoCpus`` for a CPU quantity."""
    return round(parse_cpu(value) * 1e9)
