"""Fit torch.nn.Linear(3, 2) with MSE by Rprop through optim-service, and the same model locally with
torch.optim.Rprop: the two loss curves are identical, to the last bit.

    python examples/linear_regression.py                  # the server `make serve` started, else its own
    python examples/linear_regression.py --start-server   # always its own (temporary SQLite database)

Exits with status 1 if the curves (or the final weights) differ anywhere.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from local_server import add_server_arguments, service_url

from optim_client import Client, RemoteRprop

SEED = 0


def make_data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x W + b + noise, for a fixed W and b the model has to find."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(samples, 3, generator=generator)
    true_weight = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    true_bias = torch.tensor([0.5, -1.0])
    return x, x @ true_weight.T + true_bias + 0.01 * torch.randn(samples, 2, generator=generator)


def train(model: torch.nn.Module, optimizer: RemoteRprop | torch.optim.Optimizer, epochs: int) -> list[float]:
    x, y = make_data(64)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    torch.manual_seed(SEED)
    remote_model = torch.nn.Linear(3, 2)
    local_model = copy.deepcopy(remote_model)

    with service_url(args) as url, Client(url) as client:
        optimizer = RemoteRprop(
            remote_model.named_parameters(), client=client, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50)
        )
        remote_losses = train(remote_model, optimizer, args.epochs)
        optimizer.session.delete()
    local_optimizer = torch.optim.Rprop(local_model.parameters(), lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50))
    local_losses = train(local_model, local_optimizer, args.epochs)

    print(f"{'epoch':>5}  {'loss (optim-service)':>22}  {'loss (torch.optim)':>22}")
    for epoch, (remote, local) in enumerate(zip(remote_losses, local_losses, strict=True), start=1):
        print(f"{epoch:>5}  {remote:>22.12g}  {local:>22.12g}{'' if remote == local else '  <- differs'}")
    same_weights = all(
        torch.equal(remote, local)
        for remote, local in zip(remote_model.parameters(), local_model.parameters(), strict=True)
    )
    if remote_losses != local_losses or not same_weights:
        print("MISMATCH: the service's Rprop and torch.optim.Rprop diverged", file=sys.stderr)
        return 1
    print(f"identical: {args.epochs} losses and the final weights, bit for bit (final loss {remote_losses[-1]:.6g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
