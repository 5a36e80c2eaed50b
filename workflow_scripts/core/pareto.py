"""The Pareto front of latency against accuracy: configurations no other one beats on both."""

from __future__ import annotations

import pandas as pd


def pareto_front(
    points: pd.DataFrame, latency: str = "p50_ms", score: str = "score", higher_is_better: bool = True
) -> pd.DataFrame:
    """Rows not dominated in (`latency` ↓, `score` ↑, or ↓ where `higher_is_better` is False: an error), fastest
    first: for each latency budget, the front's last row within it is the most accurate configuration that fits.
    A row is dominated when another is at least as fast and at least as accurate, and strictly better in one;
    equal rows are both kept. Rows without a latency or a score are left out. Give it one task's rows: metrics
    of different tasks do not compare."""
    if points.empty or latency not in points or score not in points:  # nothing measured (or scored) here
        return points.iloc[0:0]
    pts = points.dropna(subset=[latency, score])
    good = pts[score] if higher_is_better else -pts[score]  # "more accurate" = larger, whichever the direction
    keep = [
        i
        for i, r in pts.iterrows()
        if not (
            (pts[latency] <= r[latency]) & (good >= good[i]) & ((pts[latency] < r[latency]) | (good > good[i]))
        ).any()
    ]
    return pts.loc[keep].sort_values([latency, score], ascending=[True, not higher_is_better])
