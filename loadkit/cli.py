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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
