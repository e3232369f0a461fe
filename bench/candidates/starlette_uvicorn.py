"""Candidate (a): Starlette ``StreamingResponse`` (async generator + asyncio.sleep) on uvicorn.

python bench/candidates/starlette_uvicorn.py --port 8001 [--loop uvloop|asyncio]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

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


async def _events(model: str, n: int, in_tok: int, t0: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    yield start_group(model, in_tok)
    for offset, step, last in schedule(n, TTFT_S, TPS):
        wait = t0 + offset - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        yield delta(step) + end_group(n) if last else delta(step)


async def messages(request: Request) -> Response:
    t0 = asyncio.get_running_loop().time()
    try:
        model, n, in_tok = parse_request(await request.body())
    except ValueError:
        return Response(status_code=400)
    return StreamingResponse(
        _events(model, n, in_tok, t0),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-emulator-ttft-ms": f"{TTFT_S * 1000.0:.3f}"},
    )


app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def main() -> None:
    global TTFT_S, TPS
    p = arg_parser(__doc__ or "")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = p.parse_args()
    TTFT_S, TPS = args.ttft_ms / 1000.0, args.tps
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=args.loop,
        http="httptools",
        backlog=args.backlog,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
