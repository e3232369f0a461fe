"""A deliberately wrong policy: it retries fast 429s at once, ignoring retry-after.

The validation scenario must catch it (tests/test_fallback.py).
"""

from loadkit.client import RequestSpec
from loadkit.fallback import FallbackPolicy
from loadkit.locust_plugin import LLMUser, validation
from loadkit.record import Outcome, ResultRecord

validation.enable()


def _impatient_send(self: FallbackPolicy, spec: RequestSpec) -> ResultRecord:
    record = self.client.send(spec, max_retries=0)
    for _ in range(self.settings.max_retries):
        if record.outcome is not Outcome.RATE_LIMITED:
            break
        record = self.client.send(spec, record, max_retries=0)
    return record


FallbackPolicy.send = _impatient_send  # type: ignore[method-assign]


class ImpatientUser(LLMUser):
    pass
