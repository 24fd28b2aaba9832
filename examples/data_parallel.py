"""Train one small MLP with several worker processes through one optim-service session (data-parallel, in
synchronous rounds), then replay the run in one process and check that it ends on the same params, bit for bit.

Each worker holds its own shard of the data (of unequal sizes), computes the gradient of its shard's mean loss,
and sends it as a contribution weighted by the shard's size; each round the service applies one Rprop step to
the weighted mean of the round's contributions, so every step is a full-batch step. The replay takes the
gradients the workers sent, reduces them as the service documents (in float64, adding the weighted gradients one
worker at a time in ascending order of worker name, then dividing by the total weight) and steps
torch.optim.Rprop with the result.

    python examples/data_parallel.py                             # 4 workers; `make serve`'s server, else its own
    python examples/data_parallel.py --workers 3 --start-server  # always its own (temporary SQLite database)

Exits with status 1 if the service's params, any worker's, and the replay's differ anywhere.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import traceback
from multiprocessing.queues import Queue
from typing import Any, TypedDict

import numpy as np
import torch
from local_server import add_server_arguments, service_url

from optim_client import Client, RemoteRprop

SEED = 0
SHARE = 10
"""Worker ``rank`` holds ``SHARE * (rank + 1)`` samples: shards of unequal sizes, so that the weights matter."""
LR = 0.01
ROUND_TIMEOUT = 120.0
"""Seconds a worker waits for a round to close: longer means a worker process died."""
RESULT_TIMEOUT = 600.0

Params = dict[str, np.ndarray]


class WorkerRun(TypedDict):
    worker: str
    weight: int
    grads: list[Params]
    """The gradient it sent in each round."""
    losses: list[float]
    params: Params
    """The params its model held at the end."""


def make_data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = sin(x · w) + noise, for a fixed w."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(samples, 4, generator=generator)
    w = torch.tensor([1.5, -2.0, 0.5, 1.0])
    return x, torch.sin(x @ w).unsqueeze(1) + 0.05 * torch.randn(samples, 1, generator=generator)


def shard(rank: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker ``rank``'s share of the data: ``SHARE * (rank + 1)`` samples of its own."""
    x, y = make_data(SHARE * workers * (workers + 1) // 2)
    start, end = SHARE * rank * (rank + 1) // 2, SHARE * (rank + 1) * (rank + 2) // 2
    return x[start:end], y[start:end]


def make_model() -> torch.nn.Sequential:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def worker_name(rank: int) -> str:
    return f"rank{rank}"


def run_worker(url: str, session_id: str, rank: int, workers: int, steps: int, results: Queue[Any]) -> None:
    """One worker process: attach to the session, train on its shard for ``steps`` rounds, report what it sent."""
    torch.set_num_threads(1)
    try:
        x, y = shard(rank, workers)
        model = make_model()  # the values are overwritten with the session's when the worker attaches
        run = WorkerRun(worker=worker_name(rank), weight=len(x), grads=[], losses=[], params={})
        with Client(url, round_timeout=ROUND_TIMEOUT) as client:
            optimizer = RemoteRprop.attach(
                client, session_id, model.named_parameters(), worker=run["worker"], weight=run["weight"]
            )
            for _ in range(steps):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                run["grads"].append(
                    {
                        name: param.grad.numpy().copy()
                        for name, param in model.named_parameters()
                        if param.grad is not None
                    }
                )
                run["losses"].append(loss.item())
                optimizer.step(loss=loss)  # returns once the round has closed, with the round's params in the model
        run["params"] = {name: param.detach().numpy().copy() for name, param in model.named_parameters()}
        results.put(("ok", run))
    except BaseException:
        results.put(("failed", f"{worker_name(rank)}:\n{traceback.format_exc()}"))
        raise


def train(url: str, workers: int, steps: int) -> tuple[Params, list[WorkerRun]]:
    """The session's final params, and what each worker did, from ``workers`` processes training ``steps`` rounds."""
    model = make_model()
    with Client(url) as client:
        creator = RemoteRprop(
            model.named_parameters(), client=client, lr=LR, aggregation={"mode": "sync", "workers": workers}
        )
        context = multiprocessing.get_context("spawn")
        results: Queue[Any] = context.Queue()
        processes = [
            context.Process(target=run_worker, args=(url, creator.session.id, rank, workers, steps, results))
            for rank in range(workers)
        ]
        for process in processes:
            process.start()
        runs: list[WorkerRun] = []
        failures: list[str] = []
        try:
            for _ in processes:  # drained before joining: a process exits only once its result is taken
                outcome, value = results.get(timeout=RESULT_TIMEOUT)
                if outcome == "ok":
                    runs.append(value)
                else:
                    failures.append(value)
        except queue.Empty:
            failures.append(f"no result within {RESULT_TIMEOUT:g} s")
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        if failures:
            raise SystemExit("a worker failed: " + "\n".join(failures))
        final = creator.session.params()
        creator.session.delete()
    return final, runs


def replay(runs: list[WorkerRun], steps: int) -> Params:
    """The run again in one process: each round's gradients reduced as the service documents, stepped by
    torch.optim.Rprop."""
    model = make_model()
    optimizer = torch.optim.Rprop(model.parameters(), lr=LR)
    ordered = sorted(runs, key=lambda run: run["worker"])  # by code point, as the service orders workers
    for step in range(steps):
        for name, param in model.named_parameters():
            total = np.zeros(param.shape, dtype=np.float64)
            total_weight = 0.0
            for run in ordered:
                total = total + np.float64(run["weight"]) * run["grads"][step][name].astype(np.float64)
                total_weight += float(run["weight"])
            param.grad = torch.from_numpy((total / total_weight).astype(np.float32))
        optimizer.step()
    return {name: param.detach().numpy().copy() for name, param in model.named_parameters()}


def loss_curve(runs: list[WorkerRun], steps: int) -> list[float]:
    """The loss over all the data before each round: the shards' losses weighted by their sizes."""
    total_weight = sum(run["weight"] for run in runs)
    return [sum(run["weight"] * run["losses"][step] for run in runs) / total_weight for step in range(steps)]


def differences(expected: Params, actual: Params) -> list[str]:
    return [name for name in expected if expected[name].tobytes() != actual[name].tobytes()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    with service_url(args) as url:
        final, runs = train(url, args.workers, args.steps)
    losses = loss_curve(runs, args.steps)
    print(f"{'round':>5}  {'loss':>14}")
    for step, loss in enumerate(losses, start=1):
        print(f"{step:>5}  {loss:>14.8g}")

    replayed = replay(runs, args.steps)
    mismatches = [
        f"the replay differs from the service in {names}" for names in [differences(replayed, final)] if names
    ]
    mismatches += [
        f"{run['worker']}'s params differ from the service's in {names}"
        for run in runs
        if (names := differences(final, run["params"]))
    ]
    if mismatches:
        print("MISMATCH: " + "; ".join(mismatches), file=sys.stderr)
        return 1
    print(
        f"identical: the service's params after {args.steps} rounds of {args.workers} workers, every worker's, "
        f"and the single-process replay's, bit for bit (loss {losses[0]:.6g} -> {losses[-1]:.6g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
