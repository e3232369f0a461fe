"""Conversations: one user's multi-turn session, turn by turn (no Locust here).

A conversation starts from a request drawn from the workload (its model, speed, system
prompt, first user message and ``max_tokens`` are kept for every turn: switching speed would
lose the cache). Each answer is appended as the assistant's turn, its blocks as they came
(thinking blocks with their signatures are kept: the extended thinking page, "Preserving
thinking blocks", as of 2026-11, requires them with tool use), then:

- an answer with tool_use blocks is followed, after the simulated tool's latency, by a user
  message of ``tool_result`` blocks, one per call (tool use page, "Handling tool use and tool
  result content blocks": the results come first in the message). Those round trips do not
  use up a turn: ``turns`` counts the user's own messages, and after ``max_calls_per_turn``
  round trips the results go with the next user message instead (or, after the last turn,
  the conversation ends);
- any other answer is followed, after the think time, by the next user message, until
  ``turns`` of them have been sent.

Every request of the conversation is numbered (``RequestSpec.turn``, from 1), tool_result
requests included, so results by turn show the context (and the cached share) growing
request by request. A request that fails (or is cancelled) ends its conversation: its answer
is unknown, so no later turn could be built on it.

With ``cache`` on, one ``cache_control`` breakpoint sits on the last block of each request
(moved every turn; the system prefix may hold another: 2 of the 4 allowed). The prompt
caching page ("Caching multi-turn conversations", as of 2026-11): the prefix up to the
previous request's breakpoint is then read from the cache, and only the new part is written.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field, replace
from typing import Any

from loadkit.client import RequestSpec
from loadkit.content import Answer
from loadkit.prompts import PromptFactory
from loadkit.record import ResultRecord
from loadkit.toolsets import TOOL_RESULT_TOKENS, tool_result_block
from loadkit.workload import Conversation as ConversationSettings
from loadkit.workload import Workload

EPHEMERAL = {"type": "ephemeral"}


def content_mode(workload: Workload) -> bool:
    """Requests of this workload need their answer's content (rebuilt from the stream)."""
    return bool(workload.conversation or workload.thinking or workload.tools)


def in_conversations(workload: Workload) -> bool:
    """Users hold conversations: a conversation is configured, or tools are offered (a
    tool call is answered even in a one-turn conversation)."""
    return workload.conversation is not None or workload.tools is not None


def with_agentic(spec: RequestSpec, workload: Workload) -> RequestSpec:
    """``spec`` with the workload's thinking and tools, in content mode if they need it."""
    if workload.thinking is not None:
        spec.thinking_budget = workload.thinking.budget_tokens
        spec.interleaved_thinking = workload.thinking.interleaved
    if workload.tools is not None:
        spec.tools = workload.tools.params()
        spec.tool_choice = workload.tools.tool_choice.param()
    if content_mode(workload):
        spec.answer = Answer()
    return spec


def _blocks(content: Any) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (a string becomes one text block), without
    breakpoints of its own: the conversation places its one breakpoint itself."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{k: v for k, v in block.items() if k != "cache_control"} for block in content]


@dataclass(slots=True)
class Step:
    """The next request of a conversation, and how long to wait before sending it."""

    wait_s: float
    spec: RequestSpec


@dataclass
class ConversationState:
    """One conversation's history and where it stands; ``next_step`` / ``take`` in turn."""

    session_id: str
    first: RequestSpec  # the drawn request the conversation started from
    turns: int  # user messages in all (drawn)
    settings: ConversationSettings | None
    workload: Workload
    prompts: PromptFactory
    rng: random.Random
    history: list[dict[str, Any]] = field(default_factory=list)
    user_turns: int = 0  # user messages sent so far
    requests: int = 0  # requests sent so far (tool_result ones included)
    calls_this_turn: int = 0  # tool round trips since the last user message
    # the next request's input tokens, estimated (the cost guard's reservation, 429 causes)
    context_tokens: int = 0
    ended: str = ""  # why it ended ("" while it goes on)
    _next: Step | None = None

    def __post_init__(self) -> None:
        self.history = copy.deepcopy(self.first.messages)
        for message in self.history:
            message["content"] = _blocks(message["content"])
        self.user_turns = 1
        self.context_tokens = self.first.prompt_tokens_target
        self._next = Step(0.0, self._spec(t_tool_call_end=0))

    @property
    def cache(self) -> bool:
        return self.settings.cache if self.settings is not None else True

    def next_step(self) -> Step | None:
        """The next request to send (None: the conversation has ended)."""
        step, self._next = self._next, None
        if step is not None:
            self.requests += 1
            step.spec.turn = self.requests
        return step

    def take(self, record: ResultRecord, answer: Answer | None) -> None:
        """The answer to the request last sent: decide the next step."""
        if not record.ok or answer is None:
            self.ended = f"failed: {record.outcome.value}" if not record.ok else "no content"
            return
        content = answer.content()
        if not content:
            self.ended = "empty answer"  # nothing to append: the API refuses an empty turn
            return
        self.history.append({"role": "assistant", "content": content})
        self.context_tokens = (
            record.input_tokens
            + record.cache_read_input_tokens
            + record.cache_creation_input_tokens
            + record.output_tokens
        )
        uses = [block for block in content if block.get("type") == "tool_use"]
        tools = self.workload.tools
        if uses and tools is not None:
            results = [tool_result_block(use) for use in uses]
            if self.calls_this_turn < tools.max_calls_per_turn:
                self.calls_this_turn += 1
                self.history.append({"role": "user", "content": results})
                self.context_tokens += TOOL_RESULT_TOKENS * len(results)
                wait = tools.latency_ms.sample(self.rng) / 1000
                self._next = Step(wait, self._spec(t_tool_call_end=record.t_end))
                return
            # out of round trips: the results go with the next user message, if there is one
            if self.user_turns < self.turns:
                self._user_message(record, prefix=results)
            else:
                self.ended = "done (tool call left unanswered: max_calls_per_turn)"
            return
        if self.user_turns < self.turns:
            self._user_message(record, prefix=[])
        else:
            self.ended = "done"

    def _user_message(self, record: ResultRecord, prefix: list[dict[str, Any]]) -> None:
        settings = self.settings
        tokens = settings.user_tokens.sample(self.rng) if settings is not None else 200
        text = self.prompts.user_text(self.first.model, tokens)
        self.history.append({"role": "user", "content": [*prefix, {"type": "text", "text": text}]})
        self.context_tokens += tokens + TOOL_RESULT_TOKENS * len(prefix)
        self.user_turns += 1
        self.calls_this_turn = 0
        think = settings.think_time_ms.sample(self.rng) / 1000 if settings is not None else 0.0
        self._next = Step(think, self._spec(t_tool_call_end=record.t_end if prefix else 0))

    def _spec(self, t_tool_call_end: int) -> RequestSpec:
        messages = list(self.history)
        if self.cache:
            last = dict(messages[-1])
            blocks = list(last["content"])
            blocks[-1] = {**blocks[-1], "cache_control": dict(EPHEMERAL)}
            last["content"] = blocks
            messages[-1] = last
        spec = replace(
            self.first,
            messages=messages,
            session_id=self.session_id,
            t_intended=0,
            t_tool_call_end=t_tool_call_end,
            prompt_tokens_target=self.context_tokens,
            # a length instruction is in the first user message only (loadkit.output_target)
            output_target=0 if self.requests else self.first.output_target,
        )
        return with_agentic(spec, self.workload)


def start(
    first: RequestSpec,
    workload: Workload,
    prompts: PromptFactory,
    rng: random.Random,
) -> ConversationState:
    """A new conversation from a drawn request: its turns drawn from the workload."""
    settings = workload.conversation
    turns = settings.turns.sample(rng) if settings is not None else 1
    return ConversationState(
        session_id=f"s{rng.getrandbits(48):012x}",
        first=first,
        turns=max(1, turns),
        settings=settings,
        workload=workload,
        prompts=prompts,
        rng=rng,
    )
