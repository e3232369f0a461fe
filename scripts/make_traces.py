"""Write the example traces shipped under workloads/traces/ (one per format).

    .venv/bin/python scripts/make_traces.py [--out workloads/traces]

Both are small (200 entries over about 40 s, about 5 requests/s, Poisson arrivals) and drawn
from fixed seeds, so the files are the same on every run (a test checks that the shipped
ones are this script's output):

- ``example-loadkit.jsonl`` (loadkit's format): Haiku 4.5 and Sonnet 4.6; a third of the
  entries share the cached system prefix ``support-bot`` (5,000 tokens, above both models'
  minimum cacheable length); some are turns of a session (``session_id``, growing input);
  a few carry a ``messages`` array; most ask for an output length (``output_tokens``).
- ``example-mooncake.jsonl`` (the Mooncake trace format AIPerf reads): agent sessions whose
  prompts start with the same 10-block system prompt (hash ids 0-9, 5,120 tokens), each turn
  repeating its session's previous prompt (but its last, partial block, which grows into a
  new one) and adding new blocks, plus one-off requests that share nothing: the sharing
  shows as cache reads when replayed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = 200
RATE_PER_S = 5.0
BLOCK = 512
SYSTEM_BLOCKS = 10


def _times(rng: random.Random) -> list[float]:
    now, out = 0.0, []
    for _ in range(ENTRIES):
        out.append(round(now, 1))
        now += rng.expovariate(RATE_PER_S) * 1000
    return out


def loadkit_trace(seed: int = 15) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    sessions: dict[str, int] = {}  # session -> input tokens of its last turn
    for i, t in enumerate(_times(rng)):
        model = "claude-haiku-4-5" if rng.random() < 0.6 else "claude-sonnet-4-6"
        line: dict[str, Any] = {"timestamp_ms": t, "model": model}
        kind = rng.random()
        if kind < 0.33:
            line["prefix_id"] = "support-bot"
            line["prefix_tokens"] = 5000
            line["input_tokens"] = 5000 + rng.randint(200, 1500)
        elif kind < 0.55:
            session = f"chat-{rng.randint(1, 8)}"
            grown = sessions.get(session, rng.randint(300, 800)) + rng.randint(150, 600)
            sessions[session] = grown
            line["input_tokens"] = grown
            line["session_id"] = session
        elif kind < 0.6:
            line["messages"] = [
                {"role": "user", "content": f"Example request {i}: name three uses of a trace."}
            ]
        else:
            line["input_tokens"] = int(min(20000, max(100, rng.lognormvariate(7.0, 0.7))))
        line["max_tokens"] = rng.choice([256, 512, 1024])
        if rng.random() < 0.8:
            line["output_tokens"] = rng.randint(40, min(400, line["max_tokens"]))
        lines.append(line)
    return lines


def mooncake_trace(seed: int = 16) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    next_id = SYSTEM_BLOCKS
    sessions: dict[int, list[int]] = {}  # session -> hash ids of its last prompt
    lines: list[dict[str, Any]] = []
    for t in _times(rng):
        if rng.random() < 0.75:
            session = rng.randint(1, 12)
            ids = sessions.get(session, list(range(SYSTEM_BLOCKS)))
            added = rng.randint(1, 4)
            ids = [*ids, *range(next_id, next_id + added)]
            next_id += added
            sessions[session] = ids[:-1]  # its last block grows next turn: a new id then
        else:  # a one-off request: its blocks are its own
            added = rng.randint(1, 6)
            ids = list(range(next_id, next_id + added))
            next_id += added
        last = rng.randint(1, BLOCK)
        lines.append(
            {
                "timestamp": int(t),
                "input_length": (len(ids) - 1) * BLOCK + last,
                "output_length": rng.randint(20, 400),
                "hash_ids": ids,
            }
        )
    return lines


def write(lines: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "workloads" / "traces"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(loadkit_trace(), out / "example-loadkit.jsonl")
    write(mooncake_trace(), out / "example-mooncake.jsonl")
    print(f"wrote {out / 'example-loadkit.jsonl'} and {out / 'example-mooncake.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
