"""Where a step's time goes, in-process: each phase of one binary step, timed over many steps.

Builds the service's parts as the app does (a SQLite store in a temporary directory, durable
commits, slot files), creates one RMSprop session of N float32 params, and runs the step a
request makes: join the body's chunks, read the safetensors file, step, check, write and sync,
render the response. It prints the median of each phase. With params and state of at least
``OVERLAP_MIN_BYTES``, the finiteness check and the rendering run in helper threads beside the
write and sync, so the phases add up to more than the total.

``python -m benchmarks.step_phases --params 10000000``;
``--params 1000 --steps 2000 --idle-ms 1`` shows a small step with an idle millisecond between
steps, as a client's round trips leave.
"""

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from safetensors.numpy import save
from starlette.responses import Response

from optim_core import RMSprop
from service import sessions as service_sessions
from service.cache import OptimizerCache
from service.codecs import arrays_from_json
from service.config import Settings
from service.json_workers import JsonWorkers
from service.media import SAFETENSORS
from service.memory import keep_large_allocations
from service.routes import deps
from service.routes.deps import Wire, parse
from service.schemas import CreateSessionRequest, StepRequest
from service.sessions import Sessions, StepOutcome
from service.store import SqlSessionStore, array_files
from service.store.sqlite.commit_queue import CommitQueue

CHUNK = 1 << 16
"""What uvicorn hands a handler at a time."""

Phases = dict[str, float]


@contextmanager
def phases_timed(phases: Phases, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Time every call of each ``(owner, attribute, phase)`` into ``phases[phase]`` (seconds, summed)."""
    originals = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in targets]

    def timing(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start

        return timed

    for (owner, attribute, original), (_, _, phase) in zip(originals, targets, strict=True):
        setattr(owner, attribute, timing(original, phase))
    try:
        yield
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--idle-ms", type=float, default=0.0, help="idle time before each step")
    args = parser.parse_args()
    settings = Settings()
    keep_large_allocations(settings.malloc_mmap_threshold_bytes)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        store = SqlSessionStore(f"sqlite:///{directory}/optim.sqlite3")
        sessions = Sessions(store=store, cache=OptimizerCache(settings.cache_bytes))
        wire = Wire(JsonWorkers(processes=0, threshold_bytes=settings.json_worker_threshold_bytes))
        initial = {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(args.params, dtype=np.float32)}}
        meta, _ = sessions.create(request=parse(CreateSessionRequest, initial))
        body = save({"w": rng.standard_normal(args.params, dtype=np.float32)})
        chunks = [body[start : start + CHUNK] for start in range(0, len(body), CHUNK)]
        phases: Phases = {}
        samples: dict[str, list[float]] = {}

        def render(outcome: StepOutcome) -> Response:
            return wire.respond(
                {"step": outcome.step, "params": outcome.params},
                media_type=SAFETENSORS,
                root="params",
                version=outcome.version,
            )

        def one_step() -> None:
            joining = time.perf_counter()
            joined = b"".join(chunks)
            phases["join the body"] = time.perf_counter() - joining
            document = wire.document(SAFETENSORS, joined, root="grads", array_paths=[("grads", "*")])
            grads = arrays_from_json(parse(StepRequest, document).grads, loc=("body", "grads"), check_finite=False)
            sessions.step(
                session_id=meta.id, grads=grads, request_hash="", idempotency_key=None, if_match=None, render=render
            )

        targets = [
            (deps, "document_from_safetensors", "read the safetensors file"),
            (Sessions, "step", "Sessions.step: all that follows, and the store's transaction"),
            (SqlSessionStore, "_read", "read the session (a pooled connection, SELECTs)"),
            (CommitQueue, "commit", "commit (the write lock, UPDATE, COMMIT)"),
            (RMSprop, "step", "core step"),
            (service_sessions, "_finite", "finiteness check"),
            (array_files.ArrayFiles, "write", "write and sync the slot file"),
            (array_files, "sync_data", "  of which fdatasync"),
            (Wire, "respond", "render the response"),
        ]
        with phases_timed(phases, targets):
            for index in range(args.steps + 1):
                if args.idle_ms:
                    time.sleep(args.idle_ms / 1000)
                phases.clear()
                start = time.perf_counter()
                one_step()
                phases["total"] = time.perf_counter() - start
                if index:  # the first step warms up
                    for phase, seconds in phases.items():
                        samples.setdefault(phase, []).append(seconds)
        store.close()
    print(f"{args.params:,} float32 params, RMSprop, SQLite FULL; median of {args.steps} steps\n")
    print("| phase | ms |\n|---|---:|")
    for phase in ["join the body", *(phase for _, _, phase in targets), "total"]:
        if phase in samples:
            print(f"| {phase} | {statistics.median(samples[phase]) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
