"""A trivial FastAPI endpoint that reads a body and answers with as many bytes as asked: the
HTTP stack's own cost (uvicorn, Starlette, FastAPI), with no service work, as a floor.

``uvicorn benchmarks.echo_app:app`` serves ``POST /echo?size=N``.
"""

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/echo")
async def echo(request: Request, size: int) -> Response:
    await request.body()
    return Response(bytes(size), media_type="application/octet-stream")
