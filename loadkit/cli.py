"""The ``loadkit`` command."""

from __future__ import annotations

import argparse
import sys

from loadkit.emulator.command import add_arguments as add_emulator_arguments
from loadkit.emulator.command import run_command as run_emulator


def _compare(args: argparse.Namespace) -> int:
    from loadkit.compare import CompareError, format_comparison, judge, parse_gate
    from loadkit.results import ResultsError, load_summary

    try:
        gates = [parse_gate(text) for text in args.fail_if]
        base, new = load_summary(args.base), load_summary(args.new)
    except (CompareError, ResultsError) as err:
        print(f"loadkit compare: {err}", file=sys.stderr)
        return 2
    verdicts = [judge(gate, base, new) for gate in gates]
    print(format_comparison(base, new, verdicts))
    failed = [v for v in verdicts if v.failed]
    if failed:
        print(f"loadkit compare: {len(failed)} of {len(verdicts)} gate(s) failed", file=sys.stderr)
        return 1
    return 0


def _schema(args: argparse.Namespace) -> int:
    import json

    from loadkit.results import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import json

    from loadkit.calibrate import CalibrateError, calibrate
    from loadkit.calibrate_output import (
        config_document,
        format_report,
        report_data,
        write_config,
    )
    from loadkit.emulator.config import ConfigError, load_config
    from loadkit.yamlfiles import read_yaml

    try:
        base = load_config(args.base)
        base_mapping = read_yaml(args.base, "emulator config", ConfigError) if args.base else None
        calibration = calibrate(args.records, base)
        text = config_document(calibration, base, base_mapping, list(args.records))
        write_config(text, args.output)
        if args.report_json:
            report = json.dumps(report_data(calibration), indent=2, allow_nan=False)
            write_config(report + "\n", args.report_json)
    except (CalibrateError, ConfigError) as err:
        print(f"loadkit calibrate: {err}", file=sys.stderr)
        return 2
    print(format_report(calibration))
    print(f"\nloadkit calibrate: emulator config written to {args.output}")
    return 0


def _trace(args: argparse.Namespace) -> int:
    from loadkit.trace import TraceError, load_trace
    from loadkit.trace_records import trace_from_records, write_trace

    try:
        lines, skipped = trace_from_records(args.records)
        write_trace(lines, args.output)
        load_trace(args.output, "loadkit")  # what was written replays
    except (TraceError, OSError) as err:
        print(f"loadkit trace: {err}", file=sys.stderr)
        return 2
    left = f" ({skipped} never started, left out)" if skipped else ""
    print(f"loadkit trace: {len(lines)} requests written to {args.output}{left}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="serve an emulator of the Messages API")
    add_emulator_arguments(emulator)
    emulator.set_defaults(func=run_emulator)
    compare = commands.add_parser(
        "compare",
        help="two runs' --summary-json side by side; --fail-if gates exit 1 on a regression",
    )
    compare.add_argument("base", help="the baseline run's --summary-json file")
    compare.add_argument("new", help="the run to judge")
    compare.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="GATE",
        help="repeatable: e.g. 'ttft_p95_ms>+10%%', 'otps_p50<-5%%', 'error_rate>+0.01', "
        "'model=claude-opus-4-6,speed=fast:ttft_p99_ms>+20%%'",
    )
    compare.set_defaults(func=_compare)
    calibrate = commands.add_parser(
        "calibrate",
        help="fit an emulator config (latency, decode, fast multiplier, limits) to a run's "
        "--records files",
    )
    calibrate.add_argument("records", nargs="+", help="JSON Lines files written by --records")
    calibrate.add_argument("-o", "--output", required=True, help="the emulator config to write")
    calibrate.add_argument(
        "--base",
        default=None,
        help="emulator config whose fields the fit leaves alone are kept (default: the defaults)",
    )
    calibrate.add_argument(
        "--report-json", default="", help="also write the fit report, as JSON, to this path"
    )
    calibrate.set_defaults(func=_calibrate)
    trace = commands.add_parser(
        "trace", help="make a loadkit-format trace (--trace) from a run's --records files"
    )
    trace.add_argument(
        "--from",
        dest="records",
        nargs="+",
        required=True,
        metavar="RECORDS",
        help="JSON Lines files written by --records (a distributed run's, every worker's)",
    )
    trace.add_argument("-o", "--output", required=True, help="the trace to write (JSON Lines)")
    trace.set_defaults(func=_trace)
    schema = commands.add_parser("schema", help="print the results' JSON Schema")
    schema.set_defaults(func=_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
