"""Output-length targets: ask the model, in the prompt, for a reply of about N tokens.

The real API has no "output length" parameter: ``max_tokens`` only cuts a reply. A target is
therefore an instruction appended to the last user message. Models follow a length given in
words far better than one given in tokens, so the target (in tokens, as the workload and
``usage.output_tokens`` count them) is converted to words at ``WORDS_PER_TOKEN`` (0.75: about
4 characters of English per token and 5.3 per word), rounded, at least one word.

``instruct`` never changes the messages it is given (a dataset's prompts are shared by every
request drawn from them): it returns a new list whose last message is a copy.
"""

from __future__ import annotations

from typing import Any

WORDS_PER_TOKEN = 0.75


class OutputTargetError(ValueError):
    """Messages the instruction cannot be added to (no user message last)."""


def words_for(target: int) -> int:
    """The word count asked for to get about ``target`` output tokens."""
    return max(1, round(target * WORDS_PER_TOKEN))


def instruction(target: int) -> str:
    words = words_for(target)
    unit = "word" if words == 1 else "words"
    return f"Please answer in about {words} {unit}: no shorter, and not much longer."


def instruct(messages: list[dict[str, Any]], target: int) -> list[dict[str, Any]]:
    """``messages`` with the length instruction for ``target`` output tokens appended to the
    last user message (a string gets it after a blank line, a block list gets a text block).

    ``target`` 0 means no target: the messages are returned as they are.
    """
    if target < 0:
        raise OutputTargetError(f"output target must be >= 0, not {target}")
    if target == 0:
        return messages
    if not messages or messages[-1].get("role") != "user":
        raise OutputTargetError("an output target needs a user message last")
    last = messages[-1]
    text = instruction(target)
    content = last.get("content")
    new_content: Any
    if isinstance(content, str):
        new_content = f"{content}\n\n{text}" if content else text
    elif isinstance(content, list):
        new_content = [*content, {"type": "text", "text": text}]
    else:
        raise OutputTargetError(
            f"the last user message's content must be a string or a list of blocks, "
            f"not {type(content).__name__}"
        )
    return [*messages[:-1], {**last, "content": new_content}]
