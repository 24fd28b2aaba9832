"""State dicts between torch's layout and the service's document.

torch's layout: ``{"state": {0: {"step": tensor(3.), "prev": tensor(...)}}, "param_groups": [...]}``.
The service's: the same with string keys, arrays for tensors and a float ``step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from optim_client.values import as_array, plain, torch_style


def state_dict_to_wire(state_dict: Mapping[str, Any], dtype: np.dtype[Any]) -> dict[str, Any]:
    """A state_dict in torch's layout (tensors, numpy arrays or lists; int or str keys) as the service takes it.

    Only the representation changes; the service checks the content and names what is wrong.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a state_dict is a mapping with 'state' and 'param_groups', not {type(state_dict).__name__}")
    document = {str(key): plain(value) for key, value in state_dict.items() if key != "state"}
    state = state_dict.get("state")
    if isinstance(state, Mapping):
        document["state"] = {str(key): _wire_entry(entry, key, dtype) for key, entry in state.items()}
    elif "state" in state_dict:
        document["state"] = plain(state)
    return document


def _wire_entry(entry: object, key: object, dtype: np.dtype[Any]) -> object:
    if not isinstance(entry, Mapping):
        return plain(entry)
    return {
        str(name): plain(value) if name == "step" else as_array(value, dtype, what=f"state[{key!r}][{name!r}]")
        for name, value in entry.items()
    }


def state_dict_from_wire(document: Mapping[str, Any], dtype: np.dtype[Any]) -> dict[str, Any]:
    """The service's state_dict in torch's layout: int keys, numpy arrays of ``dtype``, float steps, tuples."""
    state = {
        int(key): {
            name: float(value) if name == "step" else np.asarray(value, dtype=dtype) for name, value in entry.items()
        }
        for key, entry in sorted(document["state"].items(), key=lambda item: int(item[0]))
    }
    return {"state": state, "param_groups": [torch_style(group) for group in document["param_groups"]]}
