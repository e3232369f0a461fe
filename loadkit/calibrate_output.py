"""What ``loadkit calibrate`` writes: the emulator config (YAML) and the fit report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from loadkit.calibrate import Calibration, Estimate, ModelFit, TtftFit
from loadkit.emulator.config import ConfigError, EmulatorConfig, ModelProfile, config_from_mapping


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def _speedup_patch(fit: ModelFit, profile: ModelProfile | None) -> dict[str, Any]:
    """Mean and spread of the fast speed-up; its clip bounds stay the base's ("up to 2.5x")
    unless the fitted mean lies outside them."""
    if fit.fast_multiplier is None:
        return {}
    mean = _round(fit.fast_multiplier.value)
    spread = _round(fit.fast_spread.value) if fit.fast_spread is not None else 0.0
    patch: dict[str, Any] = {"fast_decode_multiplier": mean, "fast_decode_spread": spread}
    low = profile.fast_decode_min if profile else 1.0
    high = profile.fast_decode_max if profile else 2.5
    if mean < low:
        patch["fast_decode_min"] = _round(max(0.01, mean - 4 * spread))
    if mean > high:
        patch["fast_decode_max"] = _round(min(100.0, mean + 4 * spread))
    return patch


def _model_patch(
    fit: ModelFit, rate_class: str | None, profile: ModelProfile | None
) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if not fit.known:
        patch.update(
            display_name=fit.model, created_at="1970-01-01T00:00:00Z", rate_limit_class=fit.model
        )
    if rate_class is not None:
        patch["rate_limit_class"] = rate_class
    if fit.ttft is not None:
        patch["ttft_base_ms"] = _round(fit.ttft.base_ms.value)
        if fit.ttft.prefill_tokens_per_s.fitted:
            patch["prefill_tokens_per_s"] = _round(fit.ttft.prefill_tokens_per_s.value)
        patch["ttft_jitter"] = _round(fit.ttft.jitter.value)
    if fit.decode is not None:
        patch["decode_tokens_per_s"] = _round(fit.decode.tokens_per_s.value)
        patch["decode_jitter"] = _round(fit.decode.jitter.value)
    if fit.fast_seen:
        patch["fast_supported"] = True
    patch.update(_speedup_patch(fit, profile))
    return patch


def config_patch(calibration: Calibration, base: EmulatorConfig) -> dict[str, Any]:
    """The fitted fields, as an emulator config file writes them (merged over a base)."""
    models = {
        fit.model: _model_patch(
            fit, calibration.model_classes.get(fit.model), base.models.get(fit.model)
        )
        for fit in calibration.models
    }
    patch: dict[str, Any] = {"models": models}
    if calibration.rate_limits:
        patch["rate_limits"] = calibration.rate_limits
    if calibration.fast_mode is not None:
        patch["fast_mode"] = calibration.fast_mode
    return patch


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def config_document(
    calibration: Calibration,
    base: EmulatorConfig,
    base_mapping: dict[str, Any] | None,
    sources: list[str],
) -> str:
    """The YAML to write: the base file's own fields (if one was given) with the fitted ones
    over them. Checked by loading it as the emulator would; ConfigError if it cannot be."""
    document = _merge(base_mapping or {}, config_patch(calibration, base))
    config_from_mapping(document, "the calibrated config", EmulatorConfig())  # as loaded
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = [
        f"# Emulator config fitted by loadkit calibrate on {when}",
        f"# from {calibration.used} of {calibration.records} records in {', '.join(sources)}",
        f"# (runs: {', '.join(calibration.runs) or 'unknown'}). Fields not written keep their",
        "# defaults (docs/emulator-config.yaml). Use: loadkit emulator --config FILE, or",
        "# --emulator-config FILE for a run's embedded emulator.",
    ]
    header += [f"# WARNING: {line}" for line in calibration.warnings]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def write_config(text: str, path: str | Path) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None


# the report -----------------------------------------------------------------------------------


def _show(estimate: Estimate | None, unit: str, digits: int = 0) -> str:
    if estimate is None:
        return "-"
    value = f"{estimate.value:.{digits}f}"
    if estimate.stderr is None:
        return f"{value} {unit} (kept)".replace("  ", " ")
    return f"{value} +- {estimate.stderr:.{digits}f} {unit}".rstrip()


def _ttft_lines(fit: TtftFit | None) -> list[str]:
    if fit is None:
        return ["    TTFT: not fitted"]
    return [
        f"    TTFT base      {_show(fit.base_ms, 'ms', 1)}",
        f"    prefill rate   {_show(fit.prefill_tokens_per_s, 'tokens/s')}"
        f"   (from {fit.sizes} prompt sizes, {fit.smallest}..{fit.largest} tokens)",
        f"    cache reads    {_show(fit.cache_read_ms_per_1k, 'ms per 1k tokens', 2)}"
        + (
            "" if fit.cache_read_ms_per_1k is not None else "  (the run's cache reads did not vary)"
        ),
        f"    TTFT jitter    {_show(fit.jitter, '', 3)}",
    ] + ([f"    ({fit.outliers} TTFT outlier(s) left out)"] if fit.outliers else [])


def format_report(calibration: Calibration) -> str:
    lines = [
        f"loadkit calibrate: {calibration.used} of {calibration.records} records used "
        "(completed in one attempt)"
    ]
    for why, count in sorted(calibration.skipped.items()):
        lines.append(f"  skipped {count}: {why}")
    lines.append("")
    lines.append("Per model x speed (estimate +- standard error):")
    for group in calibration.groups:
        lines.append(f"  {group.model} {group.speed}: {group.requests} requests")
        lines += _ttft_lines(group.ttft)
        if group.decode is not None:
            lines.append(f"    decode rate    {_show(group.decode.tokens_per_s, 'tokens/s', 1)}")
            lines.append(f"    decode jitter  {_show(group.decode.jitter, '', 3)}")
            if group.decode.outliers:
                lines.append(f"    ({group.decode.outliers} OTPS outlier(s) left out)")
    lines.append("")
    lines.append("Written to the config, per model (TTFT: all speeds together):")
    for fit in calibration.models:
        lines.append(f"  {fit.model}:")
        lines += _ttft_lines(fit.ttft)
        if fit.decode is not None:
            lines.append(f"    decode rate    {_show(fit.decode.tokens_per_s, 'tokens/s', 1)}")
            lines.append(f"    decode jitter  {_show(fit.decode.jitter, '', 3)}")
        if fit.fast_multiplier is not None:
            lines.append(f"    fast x mean    {_show(fit.fast_multiplier, '', 3)}")
            lines.append(f"    fast x spread  {_show(fit.fast_spread, '', 3)}")
    lines.append("")
    lines.append("Limits (from the -limit headers, per minute; null: no header, unlimited):")
    for name, limits in sorted(calibration.rate_limits.items()):
        members = sorted(m for m, c in calibration.model_classes.items() if c == name)
        shown = ", ".join(f"{k} {_limit(v)}" for k, v in limits.items())
        lines.append(f"  {name} ({', '.join(members)}): {shown}")
    if calibration.fast_mode is not None:
        shown = ", ".join(f"{k} {_limit(v)}" for k, v in calibration.fast_mode.items())
        lines.append(f"  fast mode: {shown}")
    if calibration.warnings:
        lines.append("")
        lines += [f"WARNING: {line}" for line in calibration.warnings]
    return "\n".join(lines)


def _limit(value: float | None) -> str:
    return "null" if value is None else f"{value:.0f}"


def report_data(calibration: Calibration) -> dict[str, Any]:
    """The report as JSON (``--report-json``): every estimate with its standard error."""
    return dataclasses.asdict(calibration)
