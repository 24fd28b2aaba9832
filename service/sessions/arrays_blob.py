"""A session's arrays as one binary blob: a safetensors file.

Tensors are named ``params/<name>`` and ``state/<index>/<key>``, where ``<index>``
is the param's index in torch's state_dict; each state entry's ``step`` (where the
algorithm keeps one: SGD does not) travels in the metadata. Params and state
together restore the optimizer exactly.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from optim_core.checks import all_finite
from service.buffers import Buffers
from service.wire.safetensors_file import dump_buffers, read

PARAMS = "params/"
STATE = "state/"


def pack(params: dict[str, np.ndarray], state: dict[str, dict[str, Any]] | None = None) -> bytes:
    """Params and (optionally) the ``state`` of a state_dict holding arrays, as safetensors bytes."""
    return b"".join(pack_buffers(params, state))


def pack_buffers(params: dict[str, np.ndarray], state: dict[str, dict[str, Any]] | None = None) -> Buffers:
    """``pack``'s blob as pieces that view the arrays' memory (see ``dump_buffers``)."""
    tensors = {f"{PARAMS}{name}": np.asarray(value, order="C") for name, value in params.items()}
    steps = {}
    for index, entry in (state or {}).items():
        if "step" in entry:
            steps[index] = entry["step"]
        for key, value in entry.items():
            if key != "step":
                tensors[f"{STATE}{index}/{key}"] = np.asarray(value, order="C")
    return dump_buffers(tensors, {"steps": orjson.dumps(steps).decode()})


def unpack(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The params and the state_dict ``state`` that ``pack`` stored, as read-only views of ``blob``."""
    read_tensors, metadata = read(blob)
    tensors = {name: tensor for name, tensor in read_tensors.items() if isinstance(tensor, np.ndarray)}
    params = {name.removeprefix(PARAMS): value for name, value in tensors.items() if name.startswith(PARAMS)}
    steps = orjson.loads(metadata.get("steps", "{}"))
    state: dict[str, dict[str, Any]] = {index: {"step": step} for index, step in steps.items()}
    for name, value in tensors.items():
        if name.startswith(STATE):
            index, key = name.removeprefix(STATE).split("/", 1)
            state.setdefault(index, {})[key] = value
    return params, state


def array_bytes(params: Mapping[str, np.ndarray], state: dict[str, dict[str, Any]]) -> int:
    """The bytes of a session's arrays, params and optimizer state: what its tenant's byte quota counts."""
    arrays = [*params.values(), *(value for entry in state.values() for key, value in entry.items() if key != "step")]
    return sum(np.asarray(array).nbytes for array in arrays)


def arrays_finite(params: Mapping[str, np.ndarray], state: dict[str, dict[str, Any]]) -> bool:
    """Whether every one of a session's arrays, params and optimizer state, is finite."""
    arrays = [*params.values(), *(value for entry in state.values() for key, value in entry.items() if key != "step")]
    return all(all_finite(array) for array in arrays)
