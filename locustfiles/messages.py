"""Streaming Messages requests drawn from a workload file (``--workload``).

locust -f locustfiles/messages.py --headless -u 20 -r 20 -t 60s --workload workloads/ci.yaml
"""

from loadkit.locust_plugin import LLMUser


class MessagesUser(LLMUser):
    pass
