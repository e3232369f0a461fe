"""Validation of a Messages request's extended thinking, tools, tool_choice and tool turns.

Follows, as of 2026-11:

- adaptive thinking (platform.claude.com/docs/en/build-with-claude/adaptive-thinking):
  ``thinking: {type: "adaptive"}`` on the models that have it (a 400 on others), interleaved
  thinking included;
- extended thinking (platform.claude.com/docs/en/build-with-claude/extended-thinking):
  ``thinking: {type: "enabled", budget_tokens: N}`` with N >= 1024 and N < max_tokens, except
  with interleaved thinking (beta ``interleaved-thinking-2025-05-14``) and tools, where the
  budget may exceed max_tokens up to the context window ("Interleaved thinking"); "Thinking
  isn't compatible with temperature or top_k modifications as well as forced tool use", top_p
  may be set between 0.95 and 1 ("Feature compatibility");
- tool use (platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use): tool
  names match ``^[a-zA-Z0-9_-]{1,64}$``, ``input_schema`` is a JSON Schema object;
  ``tool_choice`` is auto, any, tool (with a name) or none ("Forcing tool use"); each
  ``tool_result`` answers a ``tool_use`` of the assistant message just before it, and comes
  first in its message ("Handling tool use and tool result content blocks").

Error messages are the API's own where it has one (seen in its 400 answers), else a clear
sentence naming the field. A request with none of these features costs three dict lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loadkit.emulator.errors import invalid
from loadkit.emulator.http import Request
from loadkit.emulator.prompt import current_turn

INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"
MIN_BUDGET_TOKENS = 1024
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
    "extended-thinking"
)


@dataclass(slots=True, frozen=True)
class Tool:
    """A custom tool the emulator may call: its name and the schemas of its required
    properties, in the order ``required`` lists them."""

    name: str
    required: tuple[tuple[str, Any], ...]


@dataclass(slots=True, frozen=True)
class Features:
    """What a request asks beyond plain text: the answer is drawn from these."""

    budget_tokens: int  # 0: no extended thinking
    tools: tuple[Tool, ...]  # custom tools the emulator can call
    choice: str  # "auto" | "any" | "tool" | "none"
    forced_tool: str | None  # tool_choice {"type": "tool", "name": ...}
    after_tool_result: bool  # the last user message carries tool_result blocks
    interleaved: bool  # the interleaved-thinking beta header


def features(
    body: dict[str, Any],
    request: Request,
    turn_blocks: bool,
    max_tokens: int | None,
    window: int,
    adaptive: bool,
) -> Features | None:
    """The request's thinking and tool features, validated; None for a plain request.
    ``turn_blocks``: its messages hold tool or thinking blocks (``Prompt.turn_blocks``);
    ``max_tokens`` None: a count_tokens request (which has none); ``adaptive``: the model
    accepts adaptive thinking."""
    thinking = body.get("thinking")
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    if thinking is None and tools is None and tool_choice is None and not turn_blocks:
        return None
    betas = request.headers.get("anthropic-beta", "").split(",")
    interleaved = INTERLEAVED_THINKING_BETA in (beta.strip() for beta in betas)
    custom = _tools(tools)
    choice, forced = _tool_choice(tool_choice, tools, custom)
    if isinstance(thinking, dict) and thinking.get("type") == "adaptive":
        if not adaptive:
            raise invalid(
                "thinking.type: 'adaptive' is not supported by this model; use 'enabled' with "
                "budget_tokens"
            )
        # Claude decides how much to think; "adaptive thinking also automatically enables
        # interleaved thinking" (adaptive thinking page, as of 2026-11). The emulator draws
        # its thinking as a share of max_tokens (thinking_budget_percent).
        budget, interleaved = max(1, (max_tokens or 2) - 1), True
    else:
        budget = _budget(thinking, max_tokens, window, interleaved and bool(tools))
    if budget:
        _sampling_with_thinking(body)
        if choice in ("any", "tool"):
            raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
    messages: list[Any] = body["messages"]  # a non-empty list (analyse_prompt)
    after_result = _history(messages, tools is not None) if turn_blocks else False
    if turn_blocks:
        _thinking_blocks(messages, bool(budget), after_result)
    return Features(budget, custom, choice, forced, after_result, interleaved)


def _budget(thinking: Any, max_tokens: int | None, window: int, unbounded: bool) -> int:
    if thinking is None:
        return 0
    if not isinstance(thinking, dict):
        raise invalid("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return 0
    if kind != "enabled":
        raise invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    budget = thinking.get("budget_tokens")
    if budget is None:
        raise invalid("thinking.enabled.budget_tokens: Field required")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise invalid("thinking.enabled.budget_tokens: Input should be a valid integer")
    if budget < MIN_BUDGET_TOKENS:
        raise invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to "
            f"{MIN_BUDGET_TOKENS}"
        )
    if unbounded:
        if budget > window:
            raise invalid(
                f"thinking.enabled.budget_tokens: {budget} > {window}, the context window: "
                "with interleaved thinking the budget may exceed max_tokens but not the window"
            )
    elif max_tokens is not None and budget >= max_tokens:
        raise invalid(
            f"`max_tokens` must be greater than `thinking.budget_tokens`. {THINKING_DOCS}"
            "#max-tokens-and-context-window-size"
        )
    return budget


def _sampling_with_thinking(body: dict[str, Any]) -> None:
    """Sampling parameters (already known to be numbers in range) that thinking forbids."""
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise invalid(
            f"`temperature` may only be set to 1 when thinking is enabled. {THINKING_DOCS}"
            "#feature-compatibility"
        )
    if body.get("top_k") is not None:
        raise invalid(
            f"`top_k` must be unset when thinking is enabled. {THINKING_DOCS}#feature-compatibility"
        )
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise invalid(
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled. "
            f"{THINKING_DOCS}#feature-compatibility"
        )


def _tools(tools: Any) -> tuple[Tool, ...]:
    """The custom tools (server tools, with a ``type`` of their own, are accepted and never
    called)."""
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    found: list[Tool] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid(f"tools.{i}: Input should be a valid dictionary")
        kind = tool.get("type", "custom")
        name = tool.get("name")
        where = f"tools.{i}.custom" if kind in ("custom", None) else f"tools.{i}"
        if not isinstance(name, str):
            raise invalid(f"{where}.name: Field required")
        if kind not in ("custom", None):
            names.add(name)
            continue
        if TOOL_NAME.fullmatch(name) is None:
            raise invalid(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if name in names:
            raise invalid(f"tools: Tool names must be unique. Duplicate name: {name!r}")
        names.add(name)
        found.append(Tool(name, _required(tool.get("input_schema"), f"{where}.input_schema")))
    return tuple(found)


def _required(schema: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if schema is None:
        raise invalid(f"{where}: Field required")
    if not isinstance(schema, dict):
        raise invalid(f"{where}: Input should be a valid dictionary")
    if schema.get("type") != "object":
        raise invalid(f"{where}.type: Input should be 'object'")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise invalid(f"{where}.properties: Input should be a valid dictionary")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise invalid(f"{where}.required: Input should be a list of property names")
    return tuple((name, properties.get(name)) for name in dict.fromkeys(required))


def _tool_choice(tool_choice: Any, tools: Any, custom: tuple[Tool, ...]) -> tuple[str, str | None]:
    if tool_choice is None:
        return "auto", None
    if not isinstance(tool_choice, dict):
        raise invalid("tool_choice: Input should be a valid dictionary")
    kind = tool_choice.get("type")
    if kind not in TOOL_CHOICES:
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    disable = tool_choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise invalid(f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a boolean")
    if not tools:
        raise invalid("tool_choice may only be specified while providing tools.")
    if kind != "tool":
        return str(kind), None
    name = tool_choice.get("name")
    if not isinstance(name, str):
        raise invalid("tool_choice.tool.name: Field required")
    if name not in {tool.name for tool in custom}:
        raise invalid(f"tool_choice.tool.name: {name!r} is not the name of a tool in tools")
    return "tool", name


def _history(messages: Any, tools_given: bool) -> bool:
    """Tool turns pair up: every tool_result answers a tool_use of the message just before,
    every tool_use is answered in the next message. True if the last message is a user
    message carrying tool_result blocks. (``analyse_prompt`` checks the shape of messages
    and blocks first.)"""
    assert isinstance(messages, list)
    pending: list[str] = []  # tool_use ids of the previous assistant message
    last_has_results = False
    for i, message in enumerate(messages):
        content = message["content"]
        blocks = content if isinstance(content, list) else []
        if message["role"] == "assistant":
            if pending:
                _unanswered(i - 1, pending)
            pending = _tool_uses(blocks, i)
            last_has_results = False
            continue
        results = _tool_results(blocks, i, pending)
        if pending and len(results) < len(pending):
            missing = [tool_id for tool_id in pending if tool_id not in results]
            _unanswered(i - 1, missing)
        if (pending or results) and not tools_given:
            raise invalid(
                "Requests which include `tool_use` or `tool_result` blocks must define tools."
            )
        last_has_results = bool(results)
        pending = []
    return last_has_results


def _thinking_blocks(messages: list[Any], thinking: bool, after_result: bool) -> None:
    """With thinking, a tool-use turn being continued must begin with the thinking block
    that started it ("Preserving thinking blocks", extended thinking page); without, an
    assistant message in the final position (a prefill) may hold none."""
    last = messages[-1]
    if not thinking:
        content = last["content"]
        if last["role"] == "assistant" and isinstance(content, list):
            for j, block in enumerate(content):
                if block.get("type") in ("thinking", "redacted_thinking"):
                    raise invalid(
                        f"messages.{len(messages) - 1}.content.{j}: When thinking is disabled, "
                        "an `assistant` message in the final position cannot contain "
                        "`thinking`. To use thinking blocks, enable `thinking` in your request."
                    )
        return
    if not after_result:
        return
    start = current_turn(messages)
    for i in range(start, len(messages)):
        message = messages[i]
        if message["role"] != "assistant":
            continue
        content = message["content"]
        first = content[0].get("type") if isinstance(content, list) and content else "text"
        if first not in ("thinking", "redacted_thinking"):
            raise invalid(
                f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
                f"found `{first}`. When `thinking` is enabled, a final `assistant` message "
                "must start with a thinking block (preceeding the lastmost set of `tool_use` "
                "and `tool_result` blocks). We recommend you include thinking blocks from "
                f"previous turns. To avoid this requirement, disable `thinking`. {THINKING_DOCS}"
            )
        return


def _unanswered(index: int, ids: list[str]) -> None:
    raise invalid(
        f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately "
        f"after: {', '.join(ids)}. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message."
    )


def _tool_uses(blocks: list[Any], i: int) -> list[str]:
    ids: list[str] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        where = f"messages.{i}.content.{j}"
        if kind == "tool_use":
            tool_id = block.get("id")
            if not isinstance(tool_id, str) or not tool_id:
                raise invalid(f"{where}.tool_use.id: Field required")
            if not isinstance(block.get("name"), str):
                raise invalid(f"{where}.tool_use.name: Field required")
            if not isinstance(block.get("input"), dict):
                raise invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
            ids.append(tool_id)
        elif kind == "thinking":
            for name in ("thinking", "signature"):
                if not isinstance(block.get(name), str):
                    raise invalid(f"{where}.thinking.{name}: Field required")
        elif kind == "redacted_thinking" and not isinstance(block.get("data"), str):
            raise invalid(f"{where}.redacted_thinking.data: Field required")
        elif kind == "tool_result":
            raise invalid(f"{where}: tool_result blocks may only be in user messages")
    return ids


def _tool_results(blocks: list[Any], i: int, pending: list[str]) -> list[str]:
    ids: list[str] = []
    seen_other = False
    for j, block in enumerate(blocks):
        kind = block.get("type")
        where = f"messages.{i}.content.{j}"
        if kind in ("tool_use", "thinking", "redacted_thinking"):
            raise invalid(f"{where}: {kind} blocks may only be in assistant messages")
        if kind != "tool_result":
            seen_other = True
            continue
        tool_id = block.get("tool_use_id")
        if not isinstance(tool_id, str):
            raise invalid(f"{where}.tool_result.tool_use_id: Field required")
        if tool_id not in pending:
            raise invalid(
                f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_id}. "
                "Each `tool_result` block must have a corresponding `tool_use` block in the "
                "previous message."
            )
        if seen_other:
            raise invalid(
                f"messages.{i}: tool_result blocks must come first in the content of a user "
                "message, before any other block"
            )
        error = block.get("is_error")
        if error is not None and not isinstance(error, bool):
            raise invalid(f"{where}.tool_result.is_error: Input should be a valid boolean")
        ids.append(tool_id)
    return ids
