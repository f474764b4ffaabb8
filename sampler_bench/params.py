"""``NAME:key=value,key=value`` parameter lists, shared by ``--model`` and ``--schedule``."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from sampler_bench.errors import BenchError


def parse_params(rest: str, allowed: Mapping[str, Callable[[str], Any]], owner: str,
                 bad_value: Callable[[str, str], str]) -> dict[str, Any]:
    """Parse the part after ``NAME:`` into typed values.

    ``allowed`` maps each key to its converter; ``owner`` names the thing in messages (e.g.
    ``"model 'gmm'"``); ``bad_value(key, value)`` is the message for a value the converter refuses.
    """
    params: dict[str, Any] = {}
    for kv in filter(None, (s.strip() for s in rest.split(","))):
        k, eq, v = kv.partition("=")
        if not eq or k not in allowed:
            raise BenchError(f"{owner} takes parameters {', '.join(allowed) or 'none'} as key=value; got '{kv}'.")
        try:
            params[k] = allowed[k](v)
        except (ValueError, OverflowError):
            raise BenchError(bad_value(k, v)) from None
        if isinstance(params[k], float) and not math.isfinite(params[k]):
            raise BenchError(f"{owner}: {k}={v} is not a finite number; give a finite value.")
    return params
