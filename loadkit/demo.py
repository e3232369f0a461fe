"""``loadkit demo``: start the embedded emulator and stream one request through the SDK.

(The harness replaces this with a short headless load test once it lands.)
"""

from __future__ import annotations

import os
import time

from loadkit.emulator.launcher import EmulatorProcess


def run_demo() -> int:
    import anthropic

    with EmulatorProcess(seed=1) as emulator:
        client = anthropic.Anthropic(
            api_key=os.environ.get("ANTHROPIC_API_KEY") or "demo-key",
            base_url=emulator.base_url,
            max_retries=0,
        )
        sent = time.perf_counter()
        first = None
        with client.messages.stream(
            model="claude-opus-4-6",
            max_tokens=200,
            messages=[{"role": "user", "content": "Say hello to loadkit."}],
        ) as stream:
            for _ in stream.text_stream:
                first = first or time.perf_counter()
            message = stream.get_final_message()
        done = time.perf_counter()
        served = stream.response.headers.get("x-emulator-ttft-ms")
    assert first is not None
    tokens = message.usage.output_tokens
    otps = (tokens - 1) / (done - first) if tokens > 1 else float("nan")
    print(f"emulator at {emulator.base_url}: one streamed request to {message.model}")
    print(f"  TTFT {1000 * (first - sent):.1f} ms (served {served} ms)")
    print(f"  {tokens} output tokens, OTPS {otps:.1f} tokens/s, stop_reason {message.stop_reason}")
    return 0
