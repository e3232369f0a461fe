"""``loadkit emulator``: its options and what it runs (one process, or ``--processes N``)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(emulator: argparse.ArgumentParser) -> None:
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


def run_command(args: argparse.Namespace) -> int:
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


def main(argv: list[str]) -> int:
    """The emulator's command line on its own (the launcher's child runs this)."""
    parser = argparse.ArgumentParser(prog="loadkit emulator")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
