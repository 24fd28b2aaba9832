"""Minimise f(x, y) = x² + 10·y² from (5, 5) with RMSprop(lr=0.1) on optim-service, numpy only.

The gradient, (2x, 20y), is ten times steeper in y; RMSprop divides each coordinate by its own
running RMS, so both shrink at the same pace. Uses the Session API: numpy in, numpy out.

    python examples/anisotropic.py                  # the server `make serve` started, else its own
    python examples/anisotropic.py --start-server   # always its own (temporary SQLite database)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from local_server import add_server_arguments, service_url

from optim_client import Client, Session


def loss(x: float, y: float) -> float:
    return x**2 + 10 * y**2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()

    with service_url(args) as url, Client(url) as client:
        session = Session.create(
            client,
            optimizer="rmsprop",
            params={"x": np.float64(5.0), "y": np.float64(5.0)},
            hyperparameters={"lr": 0.1},
            dtype="float64",
        )
        x, y = 5.0, 5.0
        print(f"{'epoch':>5}  {'x':>12}  {'y':>12}  {'loss':>12}")
        print(f"{0:>5}  {x:>12.6g}  {y:>12.6g}  {loss(x, y):>12.6g}")
        for epoch in range(1, args.epochs + 1):
            params = session.step({"x": 2 * x, "y": 20 * y})
            x, y = float(params["x"]), float(params["y"])
            print(f"{epoch:>5}  {x:>12.6g}  {y:>12.6g}  {loss(x, y):>12.6g}")
        session.delete()
    print(f"final: x={x:.6g} y={y:.6g} loss={loss(x, y):.6g} (from {loss(5.0, 5.0):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
