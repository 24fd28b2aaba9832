"""What a step's telemetry costs: ``Optimizer.step`` against ``Optimizer.measured_step`` in one process.

For each optimizer and size, one optimizer of float32 params takes plain and measured steps in turn (A, B,
A, B, ...), each timed alone, with BLAS limited to one thread as the server limits it
(service/server/blas_threads.py); the median of each is reported, and their ratio. The HTTP step's cost
is an A/B between two servers: ``python -m benchmarks.http --checkout <the commit before>``.

Run: ``python -m benchmarks.telemetry``.
"""

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from optim_core import RMSprop, Rprop


def timed_pairs(optimizer: Rprop | RMSprop, grads: list[dict[str, np.ndarray]], pairs: int) -> tuple[float, float]:
    plain, measured = [], []
    for turn in range(pairs + 2):
        grad = grads[turn % 2]
        start = time.perf_counter()
        optimizer.step(grad)
        middle = time.perf_counter()
        optimizer.measured_step(grad)
        end = time.perf_counter()
        if turn >= 2:  # the first two pairs warm the caches and the scratch buffers
            plain.append(middle - start)
            measured.append(end - middle)
    return statistics.median(plain), statistics.median(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000, 10_000_000])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--blas-threads", type=int, default=1, help="0 leaves BLAS as it is")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, BLAS threads limited to {args.blas_threads or 'default'}, float32")
    print()
    print("| optimizer | elements | step ms | measured step ms | measured ÷ step |")
    print("|---|---:|---:|---:|---:|")
    with threadpool_limits(limits=args.blas_threads or None, user_api="blas"):
        for cls in (Rprop, RMSprop):
            for size in args.sizes:
                optimizer = cls({"w": rng.standard_normal(size, dtype=np.float32)})
                grads = [{"w": rng.standard_normal(size, dtype=np.float32)} for _ in range(2)]
                pairs = args.pairs if size < 5_000_000 else max(10, args.pairs // 4)
                plain, measured = timed_pairs(optimizer, grads, pairs)
                print(
                    f"| {cls.__name__} | {size:,} | {plain * 1e3:.3f} | {measured * 1e3:.3f} | {measured / plain:.3f} |"
                )


if __name__ == "__main__":
    main()
