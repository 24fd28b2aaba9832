"""A trivial FastAPI endpoint that reads a body and answers with as many bytes as asked: the
HTTP stack's own cost (uvicorn, Starlette, FastAPI), with no service work, as a floor.

``uvicorn benchmarks.echo_app:app`` serves ``POST /echo?size=N``. It tunes malloc as the
service does (``service.memory``), so that the floor is not slowed by what the service avoids.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from service.config import Settings
from service.server.memory import keep_large_allocations


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    keep_large_allocations(Settings().malloc_mmap_threshold_bytes)
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/echo")
async def echo(request: Request, size: int) -> Response:
    await request.body()
    return Response(bytes(size), media_type="application/octet-stream")
