"""Output-length adherence computed from per-request records (``--records``), exactly, to
check the summary's figures against."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

QUANTILES = (0.1, 0.5, 0.9)


def expected(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What ``GroupFigures.output_target`` must say for these records (None: none targeted)."""
    targeted = [r for r in records if r["output_target"] > 0 and r["outcome"] != "cancelled"]
    if not targeted:
        return None
    done = [r for r in targeted if r["outcome"] == "ok"]
    assert done, "no targeted request completed: nothing to compare"
    ratios = sorted(r["output_tokens"] / r["output_target"] for r in done)
    # DDSketch's rank for quantile q is q * (n - 1): the value at its floor
    ratio = {f"p{round(q * 100)}": ratios[math.floor(q * (len(ratios) - 1))] for q in QUANTILES}
    within = sum(
        abs(r["output_tokens"] - r["output_target"]) <= Fraction(1, 5) * r["output_target"]
        for r in done
    )
    return {
        "requests": len(targeted),
        "measured": len(done),
        "ratio": ratio,
        "within_20pct": within / len(done),
        "at_max_tokens": sum(r["stop_reason"] == "max_tokens" for r in done) / len(done),
    }


def check(figures: dict[str, Any] | None, records: list[dict[str, Any]]) -> None:
    """The summary's adherence figures equal the records' (ratios within the sketch's 1%,
    plus the rounding to 3 decimals)."""
    want = expected(records)
    if want is None:
        assert figures is None
        return
    assert figures is not None
    assert (figures["requests"], figures["measured"]) == (want["requests"], want["measured"])
    assert figures["within_20pct"] == pytest.approx(want["within_20pct"], abs=1e-4)
    assert figures["at_max_tokens"] == pytest.approx(want["at_max_tokens"], abs=1e-4)
    for name, value in want["ratio"].items():
        # the sketch's 1% relative error, plus the summary's rounding to 3 decimals
        bound = 0.01 * value + 0.0005
        assert abs(figures["ratio"][name] - value) <= bound, (name, figures["ratio"], value)
