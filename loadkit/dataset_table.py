"""The summary's lines per prompt dataset (``RunSummary.by_dataset``)."""

from __future__ import annotations

from loadkit.results import RunSummary


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def dataset_lines(summary: RunSummary) -> list[str]:
    """One line per dataset: requests, TTFT and E2E p50/p95 (ms), OTPS p50/p10, tokens and
    cost; none when the run drew no prompt from a dataset."""
    if not summary.by_dataset:
        return []
    lines = [
        "by prompt dataset (over every model x speed):",
        f"{'dataset':<20}{'reqs':>7}{'ok':>7}{'TTFT p50':>9}{'p95':>8}{'OTPS p50':>10}"
        f"{'p10':>9}{'E2E p50':>9}{'p95':>9}{'in tok':>11}{'out tok':>10}{'cost $':>10}",
    ]
    for group in summary.by_dataset:
        prompt = (
            group.input_tokens + group.cache_read_input_tokens + group.cache_creation_input_tokens
        )
        lines.append(
            f"{group.dataset:<20}{group.requests:>7}{group.ok:>7}"
            f"{_num(group.ttft_ms.p50):>9}{_num(group.ttft_ms.p95):>8}"
            f"{_num(group.otps.p50, 1):>10}{_num(group.otps.p10, 1):>9}"
            f"{_num(group.e2e_ms.p50):>9}{_num(group.e2e_ms.p95):>9}"
            f"{prompt:>11,}{group.output_tokens:>10,}{group.cost_usd:>10.4f}"
        )
    return lines
