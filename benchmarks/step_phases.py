"""Where a step's time goes, in-process: each phase of one binary step, timed over many steps.

Builds the service's parts as the app does (a SQLite store in a temporary directory, durable
commits, slot files), creates one RMSprop session of N float32 params, and runs the step a
request makes: join the body's chunks, read the safetensors file, step, check, write and sync,
render the response. It prints the median of each phase; phases nest (the store's inside
``Sessions.step``), so they add up to more than the total.

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

from optim_core import Optimizer
from service.api.bodies import parse
from service.api.schemas import StepRequest
from service.config import Settings
from service.server.blas_threads import one_blas_thread
from service.server.memory import keep_large_allocations
from service.sessions import service as service_sessions
from service.sessions.cache import OptimizerCache
from service.sessions.service import Sessions
from service.store import SqlSessionStore
from service.store.sql import SqlSessionStore as Store
from service.store.sqlite import array_files
from service.store.sqlite.commit_queue import CommitQueue
from service.tenancy.callers import anonymous
from service.wire import documents as wire_documents
from service.wire.documents import Documents
from service.wire.json_arrays import arrays_from_json
from service.wire.media_types import SAFETENSORS

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
    one_blas_thread()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        store = SqlSessionStore(f"sqlite:///{directory}/optim.sqlite3")
        sessions = Sessions(store=store, cache=OptimizerCache(settings.cache_bytes))
        documents = Documents(processes=0, threshold_bytes=settings.json_worker_threshold_bytes)
        meta, _ = sessions.create(
            caller=anonymous(),
            optimizer="rmsprop",
            params={"w": rng.standard_normal(args.params, dtype=np.float32)},
            hyperparameters={},
            param_groups=None,
            dtype="float32",
            state_dict=None,
            step=0,
        )
        body = save({"w": rng.standard_normal(args.params, dtype=np.float32)})
        chunks = [body[start : start + CHUNK] for start in range(0, len(body), CHUNK)]
        phases: Phases = {}
        samples: dict[str, list[float]] = {}

        def one_step() -> None:
            joining = time.perf_counter()
            joined = b"".join(chunks)
            phases["join the body"] = time.perf_counter() - joining
            document = documents.decode(SAFETENSORS, joined, root="grads", array_paths=[("grads", "*")])
            grads = arrays_from_json(parse(StepRequest, document).grads, loc=("body", "grads"), check_finite=False)
            with sessions.step(
                caller=anonymous(),
                session_id=meta.id,
                grads=grads,
                request_hash="",
                idempotency_key=None,
                expected_versions=None,
            ) as outcome:
                rendering = time.perf_counter()
                documents.encode(
                    {"step": outcome.step, "params": outcome.params}, media_type=SAFETENSORS, root="params"
                )
                phases["render the response"] = time.perf_counter() - rendering

        targets = [
            (wire_documents, "document_from_safetensors", "read the safetensors file"),
            (Sessions, "_step_once", "the unit of work (store included)"),
            (Store, "_read", "read the session (a pooled connection, SELECTs)"),
            (CommitQueue, "commit", "commit (the write lock, UPDATE, COMMIT)"),
            (Optimizer, "step", "core step"),
            (service_sessions, "_finite", "finiteness check"),
            (array_files.ArrayFiles, "write", "write and sync the slot file"),
            (array_files, "sync_data", "  of which fdatasync"),
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
    for phase in ["join the body", *(phase for _, _, phase in targets), "render the response", "total"]:
        if phase in samples:
            print(f"| {phase} | {statistics.median(samples[phase]) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
