"""Adherence to output-length targets: the figures of a group and the summary's lines.

A request with an output target (``ResultRecord.output_target`` > 0) asked, in its prompt, for
about that many output tokens (``loadkit.output_target``). Of those that completed, the ratio
``usage.output_tokens / output_target`` is kept in a mergeable sketch; the shares within
+-20% of the target and cut by ``max_tokens`` are counted (``aggregate.add_adherence``).
"""

from __future__ import annotations

from typing import Any

from loadkit.aggregate import Group
from loadkit.results import GroupFigures, RunSummary

RATIO_QUANTILES = (0.1, 0.5, 0.9)


def adherence_figures(group: Group) -> dict[str, Any] | None:
    """``GroupFigures.output_target`` of a group; None when no request asked for a length."""
    totals = group.totals
    requests = totals["targeted"]
    if not requests:
        return None
    measured = totals["targeted_ok"]
    sketch = group.sketches["output_ratio"]
    ratio = {f"p{round(q * 100)}": sketch.quantile(q) for q in RATIO_QUANTILES}
    return {
        "requests": requests,
        "measured": measured,
        "ratio": {k: None if v is None else round(v, 3) for k, v in ratio.items()},
        "within_20pct": round(totals["targeted_within_20pct"] / measured, 4) if measured else None,
        "at_max_tokens": round(totals["targeted_at_max_tokens"] / measured, 4)
        if measured
        else None,
    }


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def adherence_lines(summary: RunSummary) -> list[str]:
    """The summary table's lines on output-length targets (none when none was asked)."""
    if summary.total.output_target is None:
        return []
    lines = [
        "output-length targets (ratio: output tokens / target, completed requests):",
        f"{'model':<18}{'speed':<9}{'targeted':>9}{'measured':>9}{'ratio p10':>10}"
        f"{'p50':>7}{'p90':>7}{'within 20%':>11}{'at max_tokens':>14}",
    ]
    rows: list[tuple[str, str, GroupFigures]] = [(g.model, g.speed, g) for g in summary.groups]
    rows.append(("all", "", summary.total))
    for model, speed, group in rows:
        target = group.output_target
        if target is None:
            continue
        lines.append(
            f"{model:<18}{speed:<9}{target.requests:>9}{target.measured:>9}"
            f"{_ratio(target.ratio.p10):>10}{_ratio(target.ratio.p50):>7}"
            f"{_ratio(target.ratio.p90):>7}{_share(target.within_20pct):>11}"
            f"{_share(target.at_max_tokens):>14}"
        )
    return lines
