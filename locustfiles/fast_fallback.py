"""Validate fast-mode 429 handling under concurrency (exits 3 on any breach).

    locust -f locustfiles/fast_fallback.py --headless -u 200 -r 200 -t 30s \\
        --workload workloads/fast-fallback.yaml \\
        --emulator-config workloads/emulator/fast-fallback.yaml \\
        --fallback standard --recover-at 20

See docs/fallback.md for the checks and how to run it against a real key safely.
"""

from loadkit.locust_plugin import LLMUser, validation

validation.enable()


class FastModeUser(LLMUser):
    pass
