"""loadkit's Locust layer: import it from a locustfile and subclass ``LLMUser``.

``LLMUser`` and ``result_event`` are loaded on first use, with the event listeners: importing
a submodule alone (``loadkit.locust_plugin.options``) does not import Locust, whose import
monkey-patches the process with gevent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LLMUser", "result_event"]


def __getattr__(name: str) -> Any:
    if name == "LLMUser":
        from loadkit.locust_plugin import hooks  # noqa: F401 - registers the event listeners
        from loadkit.locust_plugin.user import LLMUser

        return LLMUser
    if name == "result_event":
        from loadkit.locust_plugin.reporting import result_event

        return result_event
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
