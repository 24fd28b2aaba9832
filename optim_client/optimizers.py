"""RemoteRprop and RemoteRMSprop: torch.optim.Rprop and torch.optim.RMSprop, with the state on the service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optim_client.client import Client
from optim_client.remote_optimizer import RemoteOptimizer


class RemoteRprop(RemoteOptimizer):
    """torch.optim.Rprop (iRprop-, torch 2.13's numbers bit for bit), kept on the service.

    Same signature and defaults as torch, plus the ``client`` (and ``aggregation``, for a session many workers
    train together; they join it with ``RemoteRprop.attach``), and ``send_signs``: send only the gradients'
    signs, as int8, which Rprop steps with exactly as with the gradients themselves::

        optimizer = RemoteRprop(model.named_parameters(), lr=0.01, etas=(0.5, 1.2), client=client)
    """

    optimizer_name = "rprop"

    def __init__(
        self,
        params: object,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        client: Client,
        aggregation: Mapping[str, Any] | None = None,
        send_signs: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "etas": etas,
            "step_sizes": step_sizes,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(params, defaults, client=client, aggregation=aggregation)
        self.send_signs = send_signs

    @property
    def send_signs(self) -> bool:
        """Whether each step sends its gradients' signs alone, as int8: lossless for Rprop, whose steps depend on
        nothing else, and a quarter of float32's bytes (an eighth of float64's) over safetensors."""
        return self.session.send_signs

    @send_signs.setter
    def send_signs(self, value: bool) -> None:
        self.session.send_signs = bool(value)


class RemoteRMSprop(RemoteOptimizer):
    """torch.optim.RMSprop (torch 2.13's numbers, to the rounding of its fused multiply-adds), kept on the service.

    Same signature and defaults as torch, plus the ``client`` (and ``aggregation``, for a session many workers
    train together; they join it with ``RemoteRMSprop.attach``), and ``eps_in_sqrt`` (not torch's: eps inside
    the square root, ``g / sqrt(v + eps)``, as Keras, TF1 and older Lucid define it)::

        optimizer = RemoteRMSprop(model.named_parameters(), lr=0.01, momentum=0.9, client=client)
    """

    optimizer_name = "rmsprop"

    def __init__(
        self,
        params: object,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        client: Client,
        aggregation: Mapping[str, Any] | None = None,
        eps_in_sqrt: bool = False,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        if eps_in_sqrt:
            # Not torch's: eps inside the square root (Keras, TF1, older Lucid); in the groups only when on.
            defaults["eps_in_sqrt"] = True
        super().__init__(params, defaults, client=client, aggregation=aggregation)
