"""Candidate (b): aiohttp.web ``StreamResponse`` with one coroutine per stream.

python bench/candidates/aiohttp_server.py --port 8001 [--loop asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sse_shape import (
    arg_parser,
    delta,
    end_group,
    parse_request,
    schedule,
    start_group,
)

TTFT_S = 0.2
TPS = 50.0


async def messages(request: web.Request) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        model, n, in_tok = parse_request(await request.read())
    except ValueError:
        return web.Response(status=400)
    resp = web.StreamResponse(
        headers={
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-emulator-ttft-ms": f"{TTFT_S * 1000.0:.3f}",
        }
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(start_group(model, in_tok))
    for offset, step, last in schedule(n, TTFT_S, TPS):
        wait = t0 + offset - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await resp.write(delta(step) + end_group(n) if last else delta(step))
    await resp.write_eof()
    return resp


def main() -> None:
    global TTFT_S, TPS
    p = arg_parser(__doc__ or "")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = p.parse_args()
    TTFT_S, TPS = args.ttft_ms / 1000.0, args.tps
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    runner_loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=None,
        print=None,
        loop=runner_loop,
    )


if __name__ == "__main__":
    main()
