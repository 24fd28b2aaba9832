"""What the service's pure ASGI middleware costs a request that passes through it, against none.

Times a 1k step's request (the headers a client sends, a POST) through each layer the app puts in
front of its routes that the step passes untouched, alone and all together, around a trivial app that
answers at once, against that app alone: blocks of calls of each taken in turn, the best block of each
kept. No server, no storage: the layers' own cost, which the HTTP A/B (``benchmarks.http --checkout``)
can hardly separate from its noise.

``python -m benchmarks.middleware``
"""

import argparse
import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.hosts import AllowedHosts, allowed_hosts
from service.api.instrumentation import Instrumentation
from service.api.methods import Methods
from service.api.request_ids import RequestIds
from service.api.sessions import STEP_ROUTE
from service.errors import UnhandledErrors

SCOPE: Scope = {
    "type": "http",
    "method": "POST",
    "path": "/v1/sessions/7nI9c0xP3k4xUuQ0gT6q3e8r/step",
    "root_path": "",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"9013"),
        (b"accept", b"*/*"),
        (b"user-agent", b"python-httpx/0.29.0"),
    ],
}
HOSTS = allowed_hosts(None, bind_host="127.0.0.1")
assert HOSTS is not None


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = STEP_ROUTE  # as the router leaves it, for Instrumentation's label
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    pass


STACKS: dict[str, ASGIApp] = {
    "none": answer,
    "RequestIds": RequestIds(answer),
    "UnhandledErrors": UnhandledErrors(answer),
    "AllowedHosts": AllowedHosts(answer, hosts=HOSTS),
    "Methods": Methods(answer),
    "Instrumentation": Instrumentation(answer),
    "all five": RequestIds(Instrumentation(UnhandledErrors(AllowedHosts(Methods(answer), hosts=HOSTS)))),
}


async def block(app: ASGIApp, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await app(SCOPE, receive, send)
    return (time.perf_counter() - started) / calls


async def main(calls: int, blocks: int) -> None:
    best = dict.fromkeys(STACKS, float("inf"))
    for _ in range(blocks):
        for name, app in STACKS.items():  # in turn, so that every stack sees the same moments
            best[name] = min(best[name], await block(app, calls))
    print("| layers | µs per request | more than none, µs |")
    print("|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e6:.2f} | {(seconds - best['none']) * 1e6:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.blocks))
