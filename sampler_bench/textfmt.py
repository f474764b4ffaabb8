"""Number formatting shared by the terminal, results.md and reports: never "-0.0000"."""

from __future__ import annotations

import re

_ZERO = re.compile(r"-(0\.?0*(e[+-]?\d+)?)$", re.IGNORECASE)


def fmt_num(v: float, spec: str = ".6g") -> str:
    """``format(v, spec)`` without a minus sign on a value that rounds to zero."""
    text = format(v, spec)
    m = _ZERO.match(text)
    return m.group(1) if m else text
