"""Plot styling shared by every figure of a run (the trade-off plots, the banded plot)."""

from __future__ import annotations

import seaborn as sns

from de3bert.registry import METHODS


def method_colours(methods) -> dict[str, tuple]:
    """One colour per method, the same in every plot of every run: fixed by the method's place in
    the registry (tab20's ten dark colours first, then its light ones, so neighbours differ)."""
    order = [*METHODS.names(), *sorted(set(methods) - set(METHODS.names()))]
    tab20 = sns.color_palette("tab20", 20)
    palette = [tab20[i] for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    return {m: palette[i % 20] for i, m in enumerate(order) if m in set(methods)}
