"""The LLM tab's number formatting (loadkit/locust_plugin/static/numbers.js) reads exactly as
loadkit/numbers.py's: the same digits by size, thousands separators, "-" for missing, "<0.001",
cents under a dollar, and exact ties rounded to even on the binary value (0.125 -> "0.12",
2.5 -> "2", where JavaScript's toFixed gives "0.13" and "3"). Run in headless Chromium."""

from __future__ import annotations

import math
import random
from pathlib import Path

from playwright.sync_api import sync_playwright

from loadkit.numbers import number, percent, usd

from .test_report_browser import BROWSER_ARGS, CHROMIUM

NUMBERS_JS = Path(__file__).resolve().parent.parent / "loadkit/locust_plugin/static/numbers.js"
# Exact binary ties at each rule's digits, values near the size boundaries and shortest-repr
# ties that are not binary ties (4.015 is 4.01499..., 1.005 is 1.00499...).
TIES = [0.125, 0.375, 2.5, 3.5, 150.5, 151.5, 12.25, 12.75, 0.0625, 1.005, 4.015, 0.0005,
        0.0015, 0.00125, 0.00375, 99.95, 99.96, 9.995, 9.999, 0.9995, 0.99951, 1e-5, 0.001,
        0.000999, 1234567.5, 1234568.5, 0.00105, 0.5, 0.00499, 0.995, 1.0, 100.0, 1e22, 0.0,
        -0.0, 0.30000000000000004]  # fmt: skip


def values(seed: int, size: int) -> list[float]:
    rng = random.Random(seed)
    drawn = [10 ** rng.uniform(-4, 7) * rng.choice((1, -1)) for _ in range(size)]
    # Short decimals too (the kind a p50 or a price is): more of them land on ties.
    drawn += [round(rng.uniform(-2000, 2000), rng.choice((1, 2, 3, 4))) for _ in range(size)]
    # The doubles either side of each tie round away from it.
    near = [math.nextafter(v, to) for v in TIES for to in (-math.inf, math.inf)]
    exact = TIES + near
    return drawn + exact + [-v for v in exact] + [math.nan, math.inf, -math.inf]


def test_the_tabs_numbers_read_as_the_reports() -> None:
    floats = values(seed=7, size=1500)
    ints = [0, 7, -7, 999, 1000, -1000, 12345, 1234567, 2**53, 10**22]
    ints += random.Random(8).sample(range(-(10**9), 10**9), 200)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.add_script_tag(content=NUMBERS_JS.read_text())
        shown = page.evaluate(
            """([floats, ints]) => {
              const n = window.loadkitNumbers;
              return {
                number: floats.map(n.number), percent: floats.map(n.percent),
                usd: floats.map(n.usd), count: ints.map(n.count),
                whole: ints.map(n.number), missing: [n.number(null), n.count(null),
                  n.percent(undefined), n.usd(null)],
              };
            }""",
            [floats, ints],
        )
        browser.close()

    def differences(name: str, got: list[str], want: list[str], of: list[object]) -> list[str]:
        return [
            f"{name}({v!r}): {g} != {w}" for v, g, w in zip(of, got, want, strict=True) if g != w
        ]

    wrong = [
        *differences("number", shown["number"], [number(v) for v in floats], floats),
        *differences("percent", shown["percent"], [percent(v) for v in floats], floats),
        *differences("usd", shown["usd"], [usd(v) for v in floats], floats),
        *differences("count", shown["count"], [number(v) for v in ints], ints),
        *differences("number", shown["whole"], [number(float(v)) for v in ints], ints),
    ]
    assert not wrong, f"{len(wrong)} differ, e.g. {wrong[:10]}"
    assert shown["missing"] == [number(None), number(None), percent(None), usd(None)]
    # The ties this is about (not only agreeing with whatever Python does).
    assert [number(150.5), number(12.25), number(0.0625), number(4.015)] == [
        "150",
        "12.2",
        "0.062",
        "4.01",
    ]
