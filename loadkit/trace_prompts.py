"""Trace entries made into requests: synthetic prompts of the recorded sizes.

Text that entries share (a Mooncake hash block, a loadkit prefix id) must be the same in every
process and every run: it is cut from a corpus made with a fixed seed, at an offset and with a
tag taken from its id, so equal ids give equal text and different ids different text. A block
of N tokens is N / (tokens per character) characters, the ratio measured with
``count_tokens`` for each model at start (as ``PromptFactory`` does). The rest of a prompt is
unique to its request (the run's seed, a request number).

Hash blocks are text blocks of the one user message, in order; the breakpoints chosen for the
entry (``loadkit.trace``) put ``cache_control`` on the blocks they end with.
"""

from __future__ import annotations

from typing import Any

from loadkit.client import RequestSpec
from loadkit.output_target import instruct
from loadkit.prompts import CountTokens, PromptFactory
from loadkit.trace import Trace, TraceEntry, estimated_input_tokens

SHARED_SEED = 0x7ACE  # the corpus of shared text: the same in every process
SYSTEM_OVERHEAD = 3  # tokens a system prompt adds (a few; only the unique part is resized)
EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}


class TracePrompts:
    """Builds each entry's RequestSpec; calibrate every model it will see first."""

    def __init__(self, trace: Trace, seed: int, scenario: str) -> None:
        self.trace = trace
        self.scenario = scenario
        self.corpus = PromptFactory(SHARED_SEED, corpus_chars=1 << 18).corpus
        self.unique = PromptFactory(seed)
        self.tokens_per_char: dict[str, float] = {}

    def calibrate(self, model: str, count_tokens: CountTokens) -> None:
        if model in self.tokens_per_char:
            return
        self.unique.calibrate(model, count_tokens)
        small, large = self.corpus[:2000], self.corpus[10_000:50_000]
        a = count_tokens(model, [{"role": "user", "content": small}], None)
        b = count_tokens(model, [{"role": "user", "content": large}], None)
        per_char = (b - a) / (len(large) - len(small))
        if per_char <= 0:
            raise RuntimeError(f"count_tokens gave no growth with prompt size for {model}")
        self.tokens_per_char[model] = per_char

    def shared_text(self, name: str, number: int, tokens: int, model: str) -> str:
        """``tokens`` tokens of text that depends only on (name, number): a shorter one is the
        beginning of a longer one."""
        chars = max(1, round(tokens / self.tokens_per_char[model]))
        corpus = self.corpus
        start = (number * 104_729 + len(name) * 7_919) % len(corpus)
        text = f"[{name} {number}] "
        while len(text) < chars:
            text += corpus[start : start + chars - len(text)]
            start = 0
        return text[:chars]

    def spec(self, entry: TraceEntry) -> RequestSpec:
        system: Any = None
        if entry.messages is not None:
            messages, system = entry.messages, entry.system
        elif entry.hash_ids:
            messages = [{"role": "user", "content": self._blocks(entry)}]
        elif entry.prefix_id:
            number = int.from_bytes(entry.prefix_id.encode()[:8].ljust(8, b"\0"), "big")
            text = self.shared_text(entry.prefix_id, number, entry.prefix_tokens, entry.model)
            system = [{"type": "text", "text": text, "cache_control": dict(EPHEMERAL)}]
            rest = entry.input_tokens - entry.prefix_tokens - SYSTEM_OVERHEAD
            messages, _ = self.unique.build(entry.model, max(1, rest))
        else:
            messages, _ = self.unique.build(entry.model, entry.input_tokens)
        if entry.output_target:
            messages = instruct(messages, entry.output_target)
        return RequestSpec(
            model=entry.model,
            speed=entry.speed,
            max_tokens=entry.max_tokens,
            messages=messages,
            system=system,
            scenario=self.scenario,
            prompt_tokens_target=estimated_input_tokens(entry),
            output_target=entry.output_target,
            session_id=entry.session_id,
        )

    def _blocks(self, entry: TraceEntry) -> list[dict[str, Any]]:
        size = self.trace.block_size
        last = len(entry.hash_ids) - 1
        blocks: list[dict[str, Any]] = []
        for i, block in enumerate(entry.hash_ids):
            tokens = entry.last_block_tokens if i == last else size
            text = self.shared_text("block", block, tokens, entry.model)
            item: dict[str, Any] = {"type": "text", "text": text}
            if i + 1 in entry.breakpoints:
                item["cache_control"] = dict(EPHEMERAL)
            blocks.append(item)
        return blocks
