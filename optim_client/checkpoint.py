"""A checkpoint: everything a session holds, to continue it elsewhere bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optim_client.safetensors_codec import SafetensorsCodec, decode_safetensors
from optim_client.state_dicts import state_dict_from_wire, state_dict_to_wire
from optim_client.values import DTYPES


@dataclass(frozen=True)
class Checkpoint:
    """A session's optimizer, dtype, params, param groups (hyperparameters and param names), state, step, and
    how it aggregates its workers' contributions (None for an ordinary session).

    ``Session.restore`` (or ``RemoteRMSprop.restore``) creates a session from it that continues exactly
    as the original would have, step counter included. ``to_bytes`` / ``from_bytes`` keep it in a file
    (a safetensors file, whichever transport the client uses).
    """

    optimizer: str
    dtype: str
    step: int
    params: dict[str, np.ndarray]
    param_groups: list[dict[str, Any]]
    state_dict: dict[str, Any]
    """torch's layout, with numpy arrays."""
    aggregation: dict[str, Any] | None = None

    @property
    def param_names(self) -> list[str]:
        """Every param's name, in the order of the state_dict's indices."""
        return [name for group in self.param_groups for name in group["params"]]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Checkpoint:
        dtype = DTYPES[document["dtype"]]
        return cls(
            optimizer=document["optimizer"],
            dtype=document["dtype"],
            step=int(document["step"]),
            params={
                name: np.asarray(document["params"][name], dtype=dtype)
                for group in document["param_groups"]
                for name in group["params"]
            },
            param_groups=[dict(group) for group in document["param_groups"]],
            state_dict=state_dict_from_wire(document["state_dict"], dtype),
            aggregation=document.get("aggregation"),
        )

    def to_document(self) -> dict[str, Any]:
        """The checkpoint as ``POST /v1/sessions`` takes it."""
        document = {
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "params": dict(self.params),
            "param_groups": self.param_groups,
            "state_dict": state_dict_to_wire(self.state_dict, DTYPES[self.dtype]),
            "step": self.step,
        }
        if self.aggregation is not None:
            document["aggregation"] = self.aggregation
        return document

    def to_bytes(self) -> bytes:
        return SafetensorsCodec().encode(self.to_document())

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        return cls.from_document(decode_safetensors(data))
