"""The SDK's optimizers: torch.optim's Rprop, RMSprop, SGD, Adam, AdamW and Adagrad, with the state on the service."""

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


class RemoteSGD(RemoteOptimizer):
    """torch.optim.SGD (torch 2.13's numbers, to the rounding of its fused multiply-adds), kept on the service.

    Same signature and defaults as torch, plus the ``client``::

        optimizer = RemoteSGD(model.named_parameters(), lr=0.1, momentum=0.9, nesterov=True, client=client)
    """

    optimizer_name = "sgd"

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        client: Client,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, client=client)


class RemoteAdam(RemoteOptimizer):
    """torch.optim.Adam (torch 2.13's numbers, to the rounding of its fused multiply-adds and square roots), kept on
    the service.

    Same signature and defaults as torch, plus the ``client``::

        optimizer = RemoteAdam(model.named_parameters(), lr=1e-3, amsgrad=True, client=client)
    """

    optimizer_name = "adam"

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        client: Client,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, client=client)


class RemoteAdamW(RemoteOptimizer):
    """torch.optim.AdamW (torch 2.13's numbers, to the rounding of its fused multiply-adds and square roots), kept on
    the service.

    Same signature and defaults as torch, plus the ``client``; its groups keep ``decoupled_weight_decay=True``::

        optimizer = RemoteAdamW(model.named_parameters(), lr=1e-3, weight_decay=0.01, client=client)
    """

    optimizer_name = "adamw"

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        client: Client,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": True,
        }
        super().__init__(params, defaults, client=client)


class RemoteAdagrad(RemoteOptimizer):
    """torch.optim.Adagrad (torch 2.13's numbers, to the rounding of its fused multiply-adds and square roots), kept
    on the service.

    Same signature and defaults as torch, plus the ``client``::

        optimizer = RemoteAdagrad(model.named_parameters(), lr=0.01, lr_decay=1e-4, client=client)
    """

    optimizer_name = "adagrad"

    def __init__(
        self,
        params: object,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        client: Client,
    ) -> None:
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, client=client)
