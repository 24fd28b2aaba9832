"""Time one optimizer step of optim_core against torch.optim and a memory-streaming floor.

Every row runs in this one process, on float32 params of the given sizes:
- ours: ``optim_core`` ``step()``, validation included;
- torch: ``torch.optim`` with ``foreach=False`` and ``foreach=True``, with
  ``torch.set_num_threads`` matched to ours (numpy's element-wise ufuncs use one thread);
- floor: ``np.copyto`` moving as many bytes as the update must read and write
  (a copy of B bytes reads B and writes B, so it copies half the update's traffic).

Run: ``python -m benchmarks.core`` (needs torch: ``pip install torch==2.13.0``).
"""

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optim_core import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, Rprop

OUR_THREADS = 1


@dataclass(frozen=True)
class Case:
    label: str
    ours: Callable[..., Optimizer[Any, Any]]
    theirs: Callable[..., torch.optim.Optimizer]
    hyperparameters: dict[str, float | bool]
    arrays_read: int
    """param, grad and state buffers the update reads..."""
    arrays_written: int
    """...and writes (param and state)."""


CASES = (
    Case("Rprop", Rprop, torch.optim.Rprop, {}, arrays_read=4, arrays_written=3),
    Case("RMSprop", RMSprop, torch.optim.RMSprop, {}, arrays_read=3, arrays_written=2),
    Case(
        "RMSprop momentum+centered",
        RMSprop,
        torch.optim.RMSprop,
        {"momentum": 0.9, "centered": True},
        arrays_read=5,
        arrays_written=4,
    ),
    Case("SGD", SGD, torch.optim.SGD, {"lr": 0.01}, arrays_read=2, arrays_written=1),
    Case(
        "SGD momentum+nesterov",
        SGD,
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        arrays_read=3,
        arrays_written=2,
    ),
    Case("Adam", Adam, torch.optim.Adam, {}, arrays_read=4, arrays_written=3),
    Case("Adam amsgrad", Adam, torch.optim.Adam, {"amsgrad": True}, arrays_read=5, arrays_written=4),
    Case("AdamW", AdamW, torch.optim.AdamW, {}, arrays_read=4, arrays_written=3),
    Case("Adagrad", Adagrad, torch.optim.Adagrad, {}, arrays_read=3, arrays_written=2),
)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_ours(case: Case, size: int, repeats: int, rng: np.random.Generator) -> float:
    optimizer = case.ours({"w": rng.standard_normal(size, dtype=np.float32)}, **case.hyperparameters)
    grads = [{"w": rng.standard_normal(size, dtype=np.float32)} for _ in range(2)]
    turn = iter(range(1 << 30))
    return median_seconds(lambda: optimizer.step(grads[next(turn) % 2]), repeats)


def time_torch(case: Case, size: int, repeats: int, foreach: bool, rng: np.random.Generator) -> float:
    param = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(size, dtype=np.float32)))
    optimizer = case.theirs([param], foreach=foreach, **case.hyperparameters)
    grads = [torch.from_numpy(rng.standard_normal(size, dtype=np.float32)) for _ in range(2)]
    turn = iter(range(1 << 30))

    def step() -> None:
        param.grad = grads[next(turn) % 2]
        optimizer.step()

    with torch.no_grad():
        return median_seconds(step, repeats)


def time_floor(case: Case, size: int, repeats: int) -> float:
    copied = size * (case.arrays_read + case.arrays_written) // 2
    source = np.ones(copied, dtype=np.float32)
    target = np.empty_like(source)
    return median_seconds(lambda: np.copyto(target, source), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(OUR_THREADS)
    rng = np.random.default_rng(0)

    print(f"numpy {np.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, ")
    print(f"torch threads {torch.get_num_threads()}, median of {args.repeats} steps, float32\n")
    print(
        "| optimizer | elements | ours ms | torch ms (foreach=False) | torch ms (foreach=True) | floor ms "
        "| ours ÷ torch (False) | ours ÷ torch (True) | ours ÷ floor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        for size in args.sizes:
            ours = time_ours(case, size, args.repeats, rng)
            single = time_torch(case, size, args.repeats, False, rng)
            multi = time_torch(case, size, args.repeats, True, rng)
            floor = time_floor(case, size, args.repeats)
            print(
                f"| {case.label} | {size:,} | {ours * 1e3:.2f} | {single * 1e3:.2f} | {multi * 1e3:.2f} "
                f"| {floor * 1e3:.2f} | {ours / single:.2f} | {ours / multi:.2f} | {ours / floor:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
