"""Numbers as the report shows them: never a raw float, at most 3 decimals."""

from __future__ import annotations

import pytest

from loadkit.numbers import number, percent, tick, usd


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1176.3664397015052, "1,176"),
        (123.456, "123"),
        (42.195, "42.2"),
        (3.14159, "3.14"),
        (0.0123456, "0.012"),
        (0.0004, "<0.001"),
        (0.0, "0"),
        (-12.345, "-12.3"),
        (12345, "12,345"),
        (None, "-"),
        (float("nan"), "-"),
        (float("inf"), "-"),
    ],
)
def test_number(value: float | None, shown: str) -> None:
    assert number(value) == shown


def test_percent_money_and_ticks() -> None:
    assert percent(0.01234) == "1.2%" and percent(1.0) == "100.0%" and percent(None) == "-"
    assert usd(1234.5678) == "$1,234.57" and usd(0.0123456) == "1.23¢" and usd(0.0) == "0¢"
    assert tick(0.30000000000000004) == "0.3" and tick(2500.0) == "2,500" and tick(5e-5) == "5e-05"
