"""JSON rendering of the report's computed values (claims.json, uncertainty.json).

One conversion for every JSON file, so an interval, a numpy scalar or a NaN is written the same
way everywhere (NaN → null, which strict JSON readers accept).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..stats import bootstrap as st


def jsonable(x: Any) -> Any:
    """Intervals, comparisons, numpy scalars and arrays to plain JSON values (NaN → null)."""
    if isinstance(x, st.Interval | st.Comparison):
        return jsonable(x.__dict__)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def json_text(x: Any) -> str:
    """The file text of a JSON report: `jsonable(x)`, indented, UTF-8 kept, newline-terminated."""
    return json.dumps(jsonable(x), indent=1, ensure_ascii=False) + "\n"
