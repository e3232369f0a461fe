"""loadkit's Locust layer: import it from a locustfile and subclass ``LLMUser``."""

from loadkit.locust_plugin import hooks as _hooks  # noqa: F401 - registers the event listeners
from loadkit.locust_plugin.reporting import result_event
from loadkit.locust_plugin.user import LLMUser

__all__ = ["LLMUser", "result_event"]
