"""Tool definitions a workload can name instead of writing its own (``tools: {preset: ...}``),
and the simulated tool's answer sent back in a ``tool_result`` block.

The definitions follow the tool use page (platform.claude.com/docs/en/agents-and-tools/tool-use/
implement-tool-use, "Specifying client tools", as of 2026-11): a ``name`` matching
``^[a-zA-Z0-9_-]{1,64}$``, a ``description`` and a JSON Schema ``input_schema`` of type object.
"""

from __future__ import annotations

import json
from typing import Any

#: the most tokens of one simulated tool_result (its echoed input and a short answer)
TOOL_RESULT_TOKENS = 200
RESULT_TEXT = "done: 18 C, light rain; three passages found, the first one answers it"

PRESETS: dict[str, list[dict[str, Any]]] = {
    # a small agent: a lookup and a search, each with one required property
    "agent": [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
        {
            "name": "search_docs",
            "description": "Search the product documentation and return the best passages.",
            "input_schema": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for"}},
                "required": ["query"],
            },
        },
    ],
}


def tool_result_block(tool_use: dict[str, Any], text: str = RESULT_TEXT) -> dict[str, Any]:
    """The simulated tool's answer to one ``tool_use`` block: its input echoed with ``text``
    (cut to stay within ``TOOL_RESULT_TOKENS`` at 4 characters a token)."""
    echoed = json.dumps(tool_use.get("input", {}), sort_keys=True)[: TOOL_RESULT_TOKENS * 2]
    return {
        "type": "tool_result",
        "tool_use_id": tool_use["id"],
        "content": f"{tool_use.get('name', 'tool')}({echoed}): {text}",
    }
