"""A capacity sweep: step users (closed loop) or the arrival rate (open loop) until the SLOs
break, then print the capacity per model x speed.

    locust -f locustfiles/sweep.py --headless --sweep rate --sweep-start 5 --sweep-step 5 \\
        --sweep-stop 60 --sweep-step-duration 20 -u 20 --workload workloads/ci.yaml \\
        --slo "ttft_p95_ms<=2000" --report reports/sweep.html
"""

from loadkit.locust_plugin import LLMUser
from loadkit.locust_plugin.sweepshape import SweepShape


class SweepUser(LLMUser):
    pass


class Sweep(SweepShape):
    pass
