"""Prompt synthesis: text of a requested size in input tokens, without a tokenizer.

A random corpus of ordinary words is built once; a request's prompt is a unique tag plus a
slice of the corpus at a random offset, sized by a tokens-per-character ratio calibrated with
``count_tokens`` at start (so it holds for the real API and the emulator alike).
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_VOCABULARY = (  # noqa: SIM905 - prose is easier to read and edit than a list
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy process music market sense nation plan college interest "
    "death experience effect use class control care field development role effort rate heart "
    "drug show leader light voice wife police mind price report decision son view relationship "
    "town road arm difference value building action model season society tax director "
    "position player record paper space ground form event official matter center couple site "
    "project activity star table need court oil situation cost industry figure street image "
    "phone data picture practice piece land product doctor wall patient worker news test movie "
    "north love support technology step baby computer type attention film tree source organization "
    "hair window evidence population truth song analysis news bring quickly measure carefully "
    "stream token latency server request answer explain describe compare summarize translate"
).split()

CountTokens = Callable[[str, list[dict[str, Any]], Any], int]
"""count_tokens(model, messages, system) -> input tokens, as the server counts them."""


@dataclass(slots=True)
class _Calibration:
    tokens_per_char: float
    base_tokens: int  # the request without any user text: framing, tag, system prefix


class PromptFactory:
    def __init__(
        self,
        seed: int,
        system_prefix_tokens: int = 0,
        cache_prefix: bool = False,
        cache_ttl: str = "5m",
        corpus_chars: int = 1 << 20,
    ) -> None:
        rng = random.Random(seed)
        words = rng.choices(_VOCABULARY, k=corpus_chars // 5)
        self.corpus = " ".join(words)[:corpus_chars]
        self.rng = rng
        self._ids = itertools.count()
        self._tag = f"{seed:x}"
        self._calibrations: dict[str, _Calibration] = {}
        self._lock = threading.Lock()
        self._system_prefix_tokens = system_prefix_tokens
        self._cache_prefix = cache_prefix
        self._cache_ttl = cache_ttl
        self._system: dict[str, Any] = {}

    # calibration --------------------------------------------------------------------------
    def calibrate(self, model: str, count_tokens: CountTokens) -> None:
        """Measure tokens per character of the corpus and the fixed overhead for ``model``."""
        with self._lock:
            if model in self._calibrations:
                return
            small, large = self.corpus[:2000], self.corpus[100_000:140_000]
            a = count_tokens(model, self._messages(small, 0), None)
            b = count_tokens(model, self._messages(large, 0), None)
            per_char = (b - a) / (len(large) - len(small))
            if per_char <= 0:
                raise RuntimeError(f"count_tokens gave no growth with prompt size for {model}")
            system = self._build_system(per_char)
            base = count_tokens(model, self._messages("", 0), system)
            self._system[model] = system
            self._calibrations[model] = _Calibration(per_char, base)

    def _build_system(self, per_char: float) -> Any:
        if not self._system_prefix_tokens:
            return None
        text = self._prefix_text(max(1, int(self._system_prefix_tokens / per_char)))
        block: dict[str, Any] = {"type": "text", "text": text}
        if self._cache_prefix:
            block["cache_control"] = {"type": "ephemeral"}
            if self._cache_ttl == "1h":
                block["cache_control"]["ttl"] = "1h"
        return [block]

    def _prefix_text(self, chars: int) -> str:
        """The first ``chars`` characters of the corpus repeated end to end: the same text on
        every request (so it can be cached), of the full size even past the corpus's end."""
        corpus = self.corpus
        repeats = -(-chars // (len(corpus) + 1))
        return " ".join([corpus] * repeats)[:chars]

    def calibrated(self, model: str) -> bool:
        return model in self._calibrations

    def system(self, model: str) -> Any:
        """The run's shared system prefix for ``model`` (blocks), or None; once calibrated."""
        return self._system[model]

    # per request --------------------------------------------------------------------------
    def _messages(self, text: str, request_number: int) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"[{self._tag}-{request_number}] {text}"}]

    def build(self, model: str, tokens: int) -> tuple[list[dict[str, Any]], Any]:
        """Messages and system prompt totalling about ``tokens`` input tokens."""
        calibration = self._calibrations[model]
        chars = max(0, int((tokens - calibration.base_tokens) / calibration.tokens_per_char))
        return self._messages(self._slice(chars), next(self._ids)), self._system[model]

    def user_text(self, model: str, tokens: int) -> str:
        """A new user message of about ``tokens`` tokens (a conversation's later turns: no
        system prompt or framing to subtract), tagged so that no two are alike."""
        chars = max(0, int(tokens / self._calibrations[model].tokens_per_char))
        return f"[{self._tag}-{next(self._ids)}] {self._slice(chars)}"

    def _slice(self, chars: int) -> str:
        corpus = self.corpus
        if chars <= 0:
            return ""
        parts = []
        while chars > 0:
            take = min(chars, len(corpus) // 2)
            start = self.rng.randrange(0, len(corpus) - take)
            parts.append(corpus[start : start + take])
            chars -= take
        return " ".join(parts)
