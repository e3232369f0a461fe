"""The ``loadkit`` command."""

from __future__ import annotations

import argparse
import sys


def _emulator(args: argparse.Namespace) -> int:
    from loadkit.emulator.config import ConfigError, load_config
    from loadkit.emulator.server import run

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"loadkit emulator: {err}", file=sys.stderr)
        return 2
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
    schema = commands.add_parser("schema", help="print the results' JSON Schema")
    schema.set_defaults(func=_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
