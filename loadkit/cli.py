"""The ``loadkit`` command."""

from __future__ import annotations

import argparse
import sys


def _emulator(args: argparse.Namespace) -> int:
    from loadkit.emulator.config import ConfigError, load_config
    from loadkit.emulator.server import control_token_from, run

    if args.processes < 1:
        print(
            f"loadkit emulator: --processes must be 1 or more, not {args.processes}",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"loadkit emulator: {err}", file=sys.stderr)
        return 2
    if args.processes > 1:
        from loadkit.emulator.supervisor import run_processes

        token = control_token_from(args.control_token)
        return run_processes(config, args.host, args.port, args.seed, token, args.processes)
    run(config, args.host, args.port, args.seed, control_token=args.control_token)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="serve an emulator of the Messages API")
    emulator.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    emulator.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    emulator.add_argument("--config", help="YAML file (see docs/emulator-config.yaml)")
    emulator.add_argument("--seed", type=int, default=None, help="seed for every random draw")
    emulator.add_argument(
        "--control-token",
        default=None,
        help="require this token on /_emulator/config and /_emulator/reset (default: "
        "$LOADKIT_EMULATOR_CONTROL_TOKEN; prefer it: arguments are visible in ps)",
    )
    emulator.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes on the one port (SO_REUSEPORT), sharing rate limits, prompt "
        "cache and stats (default 1)",
    )
    emulator.set_defaults(func=_emulator)
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
    schema = commands.add_parser("schema", help="print the results' JSON Schema")
    schema.set_defaults(func=_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
