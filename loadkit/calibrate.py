"""``loadkit calibrate``: fit an emulator config to a run's records (``--records``).

Per model x speed, from the requests that completed in one attempt (a retry's or fallback's
wait is no latency of the target):

- TTFT = base + prefill tokens / prefill rate (+ an effect of cache reads), by least squares
  of TTFT on the uncached input tokens (``input_tokens + cache_creation_input_tokens``, the
  tokens the target had to prefill) and, when they vary, the cache reads; the TTFT jitter is
  the standard deviation of log(TTFT / fitted TTFT);
- decode rate and jitter from each request's OTPS: log OTPS has mean log(rate) - sigma^2/2
  and standard deviation sigma for the emulator's mean-1 log-normal factor, so
  rate = exp(mean + sd^2/2) and jitter = sd;
- fast mode's speed-up, drawn per request around a mean (``fast_decode_multiplier``) with a
  spread (``fast_decode_spread``): the mean is the mean fast OTPS over the mean standard OTPS
  of the same model; the spread is what the fast OTPS vary beyond the standard ones
  (variance of log OTPS, fast minus standard), times the mean.

The emulator has one TTFT per model: its config takes the fit of all the model's speeds.
The organisation's limits come from the ``anthropic-ratelimit-*-limit`` and
``anthropic-fast-*-limit`` response headers, exactly. Every estimate carries its standard
error; a parameter the run cannot determine (too few requests, too few prompt sizes) keeps
the base config's value and gets a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadkit.emulator.config import EmulatorConfig, ModelProfile
from loadkit.leastsq import SingularFit, least_squares

MIN_SAMPLES = 10  # fewer requests in a group: nothing is fitted for it
MIN_DISTINCT_SIZES = 3  # prompt sizes the prefill fit needs
MIN_SIZE_RATIO = 1.5  # largest over smallest prefill size the prefill fit needs
MAX_RELATIVE_SE = 0.25  # a fitted parameter less certain than this gets a warning
MAX_LINE_BYTES = 64 << 20
OUTLIER_SDS = 4.0  # a sample further off (in robust standard deviations) is left out

STANDARD_BUCKETS = {
    "requests": "requests_per_minute",
    "input-tokens": "input_tokens_per_minute",
    "output-tokens": "output_tokens_per_minute",
}
FAST_BUCKETS = {
    "input-tokens": "input_tokens_per_minute",
    "output-tokens": "output_tokens_per_minute",
}
STANDARD_PREFIX = "anthropic-ratelimit-"
FAST_PREFIX = "anthropic-fast-"
_REQUIRED: dict[str, type] = {
    "model": str,
    "speed": str,
    "outcome": str,
    "attempts": list,
    "t_send": int,
    "t_first_token": int,
    "t_last_token": int,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_input_tokens": int,
    "cache_creation_input_tokens": int,
    "rate_limits": dict,
}

Limits = tuple[tuple[str, float | None], ...]  # (config field, per minute or None), sorted


class CalibrateError(ValueError):
    """Records that cannot be read; the message names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What one completed request says of the target's speed."""

    model: str
    speed: str
    prefill_tokens: int
    cache_read_tokens: int
    ttft_ms: float
    otps: float | None


@dataclass
class Observed:
    """What the record files hold, reduced to what the fits need."""

    samples: list[Sample] = field(default_factory=list)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records
    runs: set[str] = field(default_factory=set)
    standard_limits: dict[str, Counter[Limits]] = field(default_factory=dict)  # per model
    fast_limits: Counter[Limits] = field(default_factory=Counter)


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float | None  # None: not estimated from this run (kept from the base config)

    @property
    def fitted(self) -> bool:
        return self.stderr is not None


@dataclass(frozen=True)
class TtftFit:
    requests: int
    outliers: int  # left out of the fit (see _inliers)
    sizes: int  # distinct prefill sizes
    smallest: int
    largest: int
    base_ms: Estimate
    prefill_tokens_per_s: Estimate
    cache_read_ms_per_1k: Estimate | None  # None: the run's cache reads did not vary
    jitter: Estimate


@dataclass(frozen=True)
class DecodeFit:
    requests: int
    outliers: int
    tokens_per_s: Estimate  # the rate whose mean-1 log-normal draws match the OTPS
    jitter: Estimate  # standard deviation of log OTPS
    mean_otps: Estimate  # arithmetic mean


@dataclass(frozen=True)
class GroupFit:
    model: str
    speed: str
    requests: int
    ttft: TtftFit | None
    decode: DecodeFit | None


@dataclass(frozen=True)
class ModelFit:
    """What goes into the emulator's profile of one model."""

    model: str
    known: bool  # in the base config
    ttft: TtftFit | None  # all speeds together
    decode: DecodeFit | None  # standard speed
    fast_multiplier: Estimate | None  # the speed-up's mean
    fast_spread: Estimate | None  # its standard deviation
    fast_seen: bool


@dataclass
class Calibration:
    records: int
    used: int
    skipped: dict[str, int]
    runs: list[str]
    groups: list[GroupFit]
    models: list[ModelFit]
    model_classes: dict[str, str]  # model -> rate-limit class written
    rate_limits: dict[str, dict[str, float | None]]  # class -> limits (observed only)
    fast_mode: dict[str, float | None] | None  # None: no fast response seen
    warnings: list[str]


# reading --------------------------------------------------------------------------------------


def _canonical(name: str, base: EmulatorConfig) -> str:
    """A dated model ID as its alias in the base config."""
    if name in base.models:
        return name
    for alias, profile in base.models.items():
        if profile.snapshot_id == name:
            return alias
    return name


def _limits(headers: dict[str, Any], prefix: str, buckets: dict[str, str]) -> Limits | None:
    """The limits a response's headers state (a bucket without a header is unlimited), or
    None when it had none of this kind."""
    if not any(str(name).startswith(prefix) for name in headers):
        return None
    found: dict[str, float | None] = {}
    for bucket, key in buckets.items():
        value = headers.get(f"{prefix}{bucket}-limit")
        found[key] = int(value) if isinstance(value, str) and value.isdigit() else None
    return tuple(sorted(found.items()))


def _checked(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CalibrateError(f"{where}: not a JSON object (is it a file written by --records?)")
    for name, kind in _REQUIRED.items():
        if name not in data:
            raise CalibrateError(f"{where}: no field {name!r} (is it a file written by --records?)")
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CalibrateError(
                f"{where}: field {name!r} is {type(value).__name__}, not {kind.__name__}"
            )
    return data


def _sample(data: dict[str, Any], model: str) -> tuple[Sample | None, str]:
    """The record's sample, or None and why it is not one."""
    if data["outcome"] != "ok":
        return None, f"outcome {data['outcome']}"
    if data.get("ended_while_stopping") is True:
        return None, "ended while the run was stopping (its times are partly the harness's)"
    if len(data["attempts"]) != 1:
        return None, "more than one attempt (retried or fell back)"
    t_send, t_first, t_last = data["t_send"], data["t_first_token"], data["t_last_token"]
    if not t_send or not t_first or t_first <= t_send:
        return None, "no first token"
    speed = data.get("served_speed") or data["speed"]
    output = data["output_tokens"]
    otps = (output - 1) / ((t_last - t_first) / 1e9) if output >= 2 and t_last > t_first else None
    prefill = data["input_tokens"] + data["cache_creation_input_tokens"]
    ttft_ms = (t_first - t_send) / 1e6
    return Sample(model, str(speed), prefill, data["cache_read_input_tokens"], ttft_ms, otps), ""


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        handle = path.open("rb")
    except OSError as err:
        raise CalibrateError(f"cannot read records {path}: {err.strerror or err}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise CalibrateError(f"{path}:{number}: a line longer than 64 MiB")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CalibrateError(
                    f"{path}:{number}: not UTF-8 text (is it a file written by --records?)"
                ) from None
            if text.strip():
                yield number, text


def read_records(paths: Iterable[str | Path], base: EmulatorConfig) -> Observed:
    observed = Observed()
    for given in paths:
        path = Path(given)
        for number, text in _lines(path):
            where = f"{path}:{number}"
            try:
                parsed = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deep"
                raise CalibrateError(f"{where}: not JSON ({reason})") from None
            data = _checked(parsed, where)
            observed.records += 1
            if isinstance(data.get("run_id"), str):
                observed.runs.add(data["run_id"])
            model = _canonical(data["model"], base)
            headers = data["rate_limits"]
            standard = _limits(headers, STANDARD_PREFIX, STANDARD_BUCKETS)
            if standard is not None:
                observed.standard_limits.setdefault(model, Counter())[standard] += 1
            fast = _limits(headers, FAST_PREFIX, FAST_BUCKETS)
            if fast is not None:
                observed.fast_limits[fast] += 1
            sample, why = _sample(data, model)
            if sample is None:
                observed.skipped[why] += 1
            else:
                observed.samples.append(sample)
    if not observed.records:
        names = ", ".join(str(p) for p in paths) or "(none given)"
        raise CalibrateError(f"no records in {names}")
    return observed


# fitting ------------------------------------------------------------------------------------


def _sd(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _relative(estimate: Estimate) -> float:
    if estimate.stderr is None or not estimate.value:
        return 0.0
    return estimate.stderr / abs(estimate.value)


def _fit_ttft_once(
    samples: list[Sample], profile: ModelProfile, label: str, warnings: list[str]
) -> tuple[TtftFit, list[float]] | None:
    n = len(samples)
    if n < MIN_SAMPLES:
        warnings.append(
            f"{label}: {n} completed request(s), fewer than {MIN_SAMPLES}: TTFT not fitted"
        )
        return None
    x = [float(s.prefill_tokens) for s in samples]
    z = [float(s.cache_read_tokens) for s in samples]
    y = [s.ttft_ms for s in samples]
    sizes, smallest, largest = len(set(x)), int(min(x)), int(max(x))
    narrow = sizes < MIN_DISTINCT_SIZES or largest < MIN_SIZE_RATIO * max(smallest, 1)
    columns = [x] + ([z] if len(set(z)) > 1 else [])
    fit = None
    if not narrow:
        try:
            fit = least_squares(columns, y)
        except SingularFit:
            fit = None
    slope = fit.coefficients[1] if fit is not None else 0.0
    # a slope within two standard errors of zero says nothing of the prefill rate
    if fit is None or slope <= 2 * fit.stderrs[1]:
        why = (
            f"prompt sizes cover {smallest}..{largest} tokens ({sizes} distinct): too few or "
            f"too narrow (need {MIN_DISTINCT_SIZES} sizes, largest >= {MIN_SIZE_RATIO}x smallest)"
            if narrow
            else f"TTFT does not grow measurably with prompt size over {smallest}..{largest} "
            "tokens (the slope is within two standard errors of zero)"
        )
        rate = profile.prefill_tokens_per_s
        warnings.append(f"{label}: {why}: prefill rate not fitted, kept {rate:g} tokens/s")
        # with the kept rate, the base is what is left of each TTFT
        columns = [z] if len(set(z)) > 1 else []
        left = [t - tokens * 1000.0 / rate for t, tokens in zip(y, x, strict=True)]
        if columns:
            fit = least_squares(columns, left)
            base = Estimate(fit.coefficients[0], fit.stderrs[0])
        else:
            base = Estimate(math.fsum(left) / n, _sd(left) / math.sqrt(n))
        prefill = Estimate(rate, None)
        per_token = 1000.0 / rate
        cache_index = 1
    else:
        base = Estimate(fit.coefficients[0], fit.stderrs[0])
        prefill = Estimate(1000.0 / slope, 1000.0 * fit.stderrs[1] / slope**2)
        per_token = slope
        cache_index = 2
        if _relative(prefill) > MAX_RELATIVE_SE:
            warnings.append(
                f"{label}: prefill rate {prefill.value:.0f} +- {prefill.stderr:.0f} tokens/s "
                f"is uncertain (prompt sizes {smallest}..{largest}): a wider spread of prompt "
                "sizes, or more requests, would pin it down"
            )
    cache = None
    if len(set(z)) > 1 and fit is not None and len(fit.coefficients) > cache_index:
        cache = Estimate(1000.0 * fit.coefficients[cache_index], 1000.0 * fit.stderrs[cache_index])
    cache_per_token = cache.value / 1000.0 if cache is not None else 0.0
    if base.value < 0:
        warnings.append(f"{label}: fitted TTFT base {base.value:.1f} ms is negative: written as 0")
        base = Estimate(0.0, base.stderr)
    ratios = []  # log(TTFT / fitted TTFT), per sample (nan: no fitted TTFT)
    for sample in samples:
        fitted = (
            base.value
            + per_token * sample.prefill_tokens
            + cache_per_token * sample.cache_read_tokens
        )
        ok = fitted > 0 and sample.ttft_ms > 0
        ratios.append(math.log(sample.ttft_ms / fitted) if ok else math.nan)
    finite = [r for r in ratios if math.isfinite(r)]
    sigma = _sd(finite) if len(finite) > 1 else 0.0
    jitter = Estimate(sigma, sigma / math.sqrt(2 * max(1, len(finite) - 1)))
    return TtftFit(n, 0, sizes, smallest, largest, base, prefill, cache, jitter), ratios


def _inliers(values: list[float]) -> list[bool]:
    """Which values lie within OUTLIER_SDS robust standard deviations (1.4826 x the median
    absolute deviation) of the median: a stalled client or network (every token of a stream
    read at once) is no jitter of the target's."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 2:
        return [math.isfinite(v) for v in values]
    median = statistics.median(finite)
    spread = 1.4826 * statistics.median(abs(v - median) for v in finite)
    bound = OUTLIER_SDS * max(spread, 1e-3)
    return [math.isfinite(v) and abs(v - median) <= bound for v in values]


def fit_ttft(
    samples: list[Sample], profile: ModelProfile, label: str, warnings: list[str]
) -> TtftFit | None:
    """The least-squares fit, then the same fit without the samples far off it."""
    first = _fit_ttft_once(samples, profile, label, [])
    if first is None:
        _fit_ttft_once(samples, profile, label, warnings)  # says why not
        return None
    kept = [s for s, keep in zip(samples, _inliers(first[1]), strict=True) if keep]
    second = _fit_ttft_once(kept, profile, label, warnings)
    if second is None:
        return None
    return dataclasses.replace(second[0], requests=len(samples), outliers=len(samples) - len(kept))


def fit_decode(samples: list[Sample], label: str, warnings: list[str]) -> DecodeFit | None:
    logs = [math.log(s.otps) for s in samples if s.otps is not None and s.otps > 0]
    n = len(logs)
    if n < MIN_SAMPLES:
        warnings.append(
            f"{label}: {n} request(s) with 2 or more output tokens, fewer than {MIN_SAMPLES}: "
            "decode rate not fitted"
        )
        return None
    kept = [v for v, keep in zip(logs, _inliers(logs), strict=True) if keep]
    m = len(kept)
    log_mean, sd = math.fsum(kept) / m, _sd(kept)
    rate = math.exp(log_mean + sd * sd / 2)
    rate_se = rate * math.sqrt(sd * sd / m + sd**4 / (2 * (m - 1)))
    jitter = Estimate(sd, sd / math.sqrt(2 * (m - 1)))
    values = [math.exp(v) for v in kept]
    mean = Estimate(math.fsum(values) / m, _sd(values) / math.sqrt(m))
    return DecodeFit(n, n - m, Estimate(rate, rate_se), jitter, mean)


def _ratio(fast: Estimate, standard: Estimate) -> Estimate:
    value = fast.value / standard.value
    return Estimate(value, value * math.hypot(_relative(fast), _relative(standard)))


def _spread(fast: DecodeFit, standard: DecodeFit, mean: float) -> Estimate:
    """The speed-up's standard deviation: var(log fast OTPS) = decode jitter^2 +
    var(log speed-up), and sd(speed-up) ~ mean x sd(log speed-up)."""
    a, b = fast.jitter.value**2, standard.jitter.value**2
    n_fast, n_standard = fast.requests - fast.outliers, standard.requests - standard.outliers
    excess = max(0.0, a - b)
    se_excess = math.sqrt(2 * a * a / (n_fast - 1) + 2 * b * b / (n_standard - 1))
    if excess <= 0:
        return Estimate(0.0, mean * math.sqrt(se_excess))
    return Estimate(mean * math.sqrt(excess), mean * se_excess / (2 * math.sqrt(excess)))


def _profile(model: str, base: EmulatorConfig) -> ModelProfile:
    found = base.models.get(model)
    if found is not None:
        return found
    return ModelProfile(
        display_name=model,
        created_at="1970-01-01T00:00:00Z",
        rate_limit_class=model,
        ttft_base_ms=600,
        prefill_tokens_per_s=40_000,
        decode_tokens_per_s=70,
    )


def _compare_speeds(model: str, fits: dict[str, TtftFit], warnings: list[str]) -> None:
    standard, fast = fits.get("standard"), fits.get("fast")
    if standard is None or fast is None:
        return
    a, b = standard.base_ms, fast.base_ms
    spread = math.hypot(a.stderr or 0.0, b.stderr or 0.0)
    if abs(a.value - b.value) > max(3 * spread, 0.05 * max(a.value, b.value)):
        warnings.append(
            f"{model}: TTFT base differs between speeds (standard {a.value:.1f} ms, fast "
            f"{b.value:.1f} ms); the emulator has one TTFT per model: the fit of both is written"
        )


def fit_model(
    model: str, samples: list[Sample], base: EmulatorConfig, warnings: list[str]
) -> tuple[ModelFit, list[GroupFit]]:
    profile = _profile(model, base)
    by_speed: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_speed[sample.speed].append(sample)
    groups = []
    ttft_by_speed: dict[str, TtftFit] = {}
    decode_by_speed: dict[str, DecodeFit] = {}
    for speed in sorted(by_speed):
        label = f"{model} {speed}"
        ttft = fit_ttft(by_speed[speed], profile, label, warnings)
        decode = fit_decode(by_speed[speed], label, warnings)
        groups.append(GroupFit(model, speed, len(by_speed[speed]), ttft, decode))
        if ttft is not None:
            ttft_by_speed[speed] = ttft
        if decode is not None:
            decode_by_speed[speed] = decode
    _compare_speeds(model, ttft_by_speed, warnings)
    if len(by_speed) == 1:
        pooled = ttft_by_speed.get(next(iter(by_speed)))
    else:
        pooled = fit_ttft(samples, profile, f"{model} (all speeds)", [])
    standard, fast = decode_by_speed.get("standard"), decode_by_speed.get("fast")
    multiplier = spread = None
    if standard is not None and fast is not None:
        multiplier = _ratio(fast.mean_otps, standard.mean_otps)
        spread = _spread(fast, standard, multiplier.value)
    elif fast is not None:
        kept = profile.fast_decode_multiplier
        warnings.append(
            f"{model}: fast requests only: the standard decode rate is the fast one over the "
            f"kept multiplier {kept:g}"
        )
        rate = Estimate(fast.tokens_per_s.value / kept, None)
        standard = DecodeFit(fast.requests, fast.outliers, rate, fast.jitter, fast.mean_otps)
    elif "fast" not in by_speed and profile.fast_supported:
        warnings.append(
            f"{model}: no fast request completed: fast multiplier not fitted, kept "
            f"{profile.fast_decode_multiplier:g}"
        )
    fit = ModelFit(
        model=model,
        known=model in base.models,
        ttft=pooled,
        decode=standard,
        fast_multiplier=multiplier,
        fast_spread=spread,
        fast_seen="fast" in by_speed,
    )
    return fit, groups


def _most_common(counts: Counter[Limits], what: str, warnings: list[str]) -> Limits:
    (chosen, _), *others = counts.most_common()
    if others:
        warnings.append(
            f"{what}: the limit headers changed during the run ({len(others) + 1} different "
            "sets): the most frequent is written"
        )
    return chosen


def fit_limits(
    observed: Observed, base: EmulatorConfig, warnings: list[str]
) -> tuple[dict[str, str], dict[str, dict[str, float | None]]]:
    """Each observed model's rate-limit class and the classes' limits. Models keep their
    base class when every observed model of it reports the same limits; else each gets a
    class of its own, named after it."""
    per_model = {
        model: _most_common(counts, f"{model} rate limits", warnings)
        for model, counts in sorted(observed.standard_limits.items())
    }
    by_class: dict[str, dict[str, Limits]] = defaultdict(dict)
    for model, limits in per_model.items():
        by_class[_profile(model, base).rate_limit_class][model] = limits
    classes: dict[str, str] = {}
    limits_of: dict[str, dict[str, float | None]] = {}
    for name, members in sorted(by_class.items()):
        if len(set(members.values())) == 1:
            classes.update(dict.fromkeys(members, name))
            limits_of[name] = dict(next(iter(members.values())))
            continue
        warnings.append(
            f"rate-limit class {name!r}: its models report different limits "
            f"({', '.join(sorted(members))}): each gets a class of its own"
        )
        for model, limits in members.items():
            classes[model] = model
            limits_of[model] = dict(limits)
    return classes, limits_of


def calibrate(paths: Iterable[str | Path], base: EmulatorConfig | None = None) -> Calibration:
    base = base or EmulatorConfig()
    paths = list(paths)
    observed = read_records(paths, base)
    warnings: list[str] = []
    by_model: dict[str, list[Sample]] = defaultdict(list)
    for sample in observed.samples:
        by_model[sample.model].append(sample)
    if not by_model:
        reasons = ", ".join(f"{why} x{n}" for why, n in observed.skipped.most_common())
        raise CalibrateError(
            f"none of the {observed.records} records completed in one attempt ({reasons}): "
            "nothing to fit"
        )
    models, groups = [], []
    for model in sorted(by_model):
        if model not in base.models:
            warnings.append(f"{model}: not in the base config: its other fields are defaults")
        fit, model_groups = fit_model(model, by_model[model], base, warnings)
        models.append(fit)
        groups.extend(model_groups)
    classes, limits = fit_limits(observed, base, warnings)
    fast_mode = None
    if observed.fast_limits:
        fast_mode = dict(_most_common(observed.fast_limits, "fast-mode limits", warnings))
    if not observed.standard_limits:
        warnings.append("no anthropic-ratelimit-* headers in the records: limits not fitted")
    return Calibration(
        records=observed.records,
        used=len(observed.samples),
        skipped=dict(observed.skipped),
        runs=sorted(observed.runs),
        groups=groups,
        models=models,
        model_classes=classes,
        rate_limits=limits,
        fast_mode=fast_mode,
        warnings=warnings,
    )
