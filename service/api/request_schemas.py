"""The request bodies as the OpenAPI document states them: as strict as the server's validation.

pydantic's models (``schemas.py``) parse the envelopes; what is inside them is checked by the wire
codecs (arrays), the sessions (names, groups) and the core (hyperparameters). These schemas state the
same rules, from the same sources: the registry's hyperparameter schemas, ``PARAM_NAME``, the range of
each dtype. A create body is one of a variant per optimizer and dtype, so that each names only its
optimizer's hyperparameters and its dtype's numbers. What JSON Schema cannot say, the descriptions say:
arrays are rectangular, each param is in exactly one group, a state_dict fits the params it comes with,
a pair is in order.
"""

from typing import Any

import numpy as np

from optim_core import ALGORITHMS
from optim_core.spec import AlgorithmSpec
from service.api.lr_scheduler_schemas import lr_scheduler_schemas
from service.sessions.aggregation import MAX_TIMEOUT_SECONDS, MAX_WEIGHT, MAX_WORKERS, WORKER_ID
from service.sessions.optimizers import DTYPES
from service.sessions.service import PARAM_NAME
from service.wire.json_arrays import MAX_STEP

Schema = dict[str, Any]

STATE_KEY_PATTERN = "^(0|[1-9][0-9]{0,17})$"
"""A param's index in a state_dict, as torch's state_dict keys it."""


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _number(dtype: str) -> Schema:
    largest = float(np.finfo(DTYPES[dtype]).max)
    return {"type": "number", "minimum": -largest, "maximum": largest}


def _array(dtype: str) -> Schema:
    return {
        "description": f"A number (a 0-d array) or rectangular nested lists of numbers, within {dtype}'s range.",
        "anyOf": [ref(f"Number_{dtype}"), ref(f"NumericList_{dtype}")],
    }


def _list(dtype: str) -> Schema:
    return {
        "type": "array",
        "description": "Rectangular: the lists at each depth have one length.",
        "anyOf": [{"items": ref(f"Number_{dtype}")}, {"items": ref(f"NumericList_{dtype}")}],
    }


def _arrays_by_name(dtype: str, description: str, *, min_properties: int = 1) -> Schema:
    return {
        "type": "object",
        "description": description,
        "minProperties": min_properties,
        "propertyNames": ref("ParamName"),
        "additionalProperties": ref(f"NumericArray_{dtype}"),
    }


def _names(description: str) -> Schema:
    return {"type": "array", "items": ref("ParamName"), "uniqueItems": True, "description": description}


def _hyperparameters(spec: AlgorithmSpec[Any, Any]) -> Schema:
    return {
        "type": "object",
        "description": f"torch.optim.{spec.torch_name}'s hyperparameters, by torch's names; the rest keep "
        "torch's defaults.",
        "properties": {key: dict(schema) for key, schema in spec.hyperparameter_schemas.items()},
        "additionalProperties": False,
    }


def _param_group(spec: AlgorithmSpec[Any, Any]) -> Schema:
    return {
        "type": "object",
        "description": "A param group: its params, and hyperparameters that override the session's.",
        "properties": {
            "params": _names("Names of the body's params; each param is in exactly one group."),
            **_hyperparameters(spec)["properties"],
        },
        "required": ["params"],
        "additionalProperties": False,
    }


def _state_dict(spec: AlgorithmSpec[Any, Any], dtype: str) -> Schema:
    entry = {
        "type": "object",
        "properties": {
            **({"step": {"type": "integer", "minimum": 0, "maximum": MAX_STEP}} if spec.step_in_state else {}),
            **{name: ref(f"NumericArray_{dtype}") for name in spec.state_arrays},
        },
        "additionalProperties": False,
    }
    group = {
        "type": "object",
        "properties": {
            "params": {"type": "array", "items": {"type": "integer", "minimum": 0}, "uniqueItems": True},
            "param_names": _names("The names of the params at those indices."),
            **_hyperparameters(spec)["properties"],
        },
        "required": ["params", *spec.defaults],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "description": f"torch.optim.{spec.torch_name}'s state_dict: each param's state by its index, and every "
        "group with all of its hyperparameters. It must fit the params it comes with: their count, shapes and "
        "groups.",
        "properties": {
            "state": {"type": "object", "propertyNames": {"pattern": STATE_KEY_PATTERN}, "additionalProperties": entry},
            "param_groups": {"type": "array", "minItems": 1, "items": group},
        },
        "required": ["state", "param_groups"],
        "additionalProperties": False,
    }


CLIP_GRAD_NORM_SCHEMA: Schema = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "max_norm": {"type": "number", "minimum": 0},
                "norm_type": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "inf"}]},
            },
            "required": ["max_norm"],
            "additionalProperties": False,
        },
        {"type": "null"},
    ],
    "description": "Clip each step's gradients by their global norm first, as torch.nn.utils.clip_grad_norm_ "
    "(norm_type 2.0 by default); null for none.",
}


def _lr_scheduler(config: str) -> Schema:
    return {
        "anyOf": [ref(config), {"type": "null"}],
        "description": "An LR schedule advanced after every step; null for none.",
    }


NONFINITE_SCHEMA: Schema = {
    "enum": ["reject", "skip"],
    "description": "A step with a non-finite gradient: refused (422), or answered unchanged and not applied.",
}


def _create(spec: AlgorithmSpec[Any, Any], dtype: str, *, default_dtype: str) -> Schema:
    has_momentum = "momentum" in spec.defaults or "betas" in spec.defaults
    config = "LRSchedulerConfig" if has_momentum else "LRSchedulerConfigWithoutMomentum"
    dtype_schema: Schema = {"const": dtype, "description": f"Default: {default_dtype}."}
    return {
        "type": "object",
        "title": f"Create a {spec.torch_name} session in {dtype}",
        "properties": {
            "optimizer": {"const": spec.name},
            "params": _arrays_by_name(dtype, "The params by name, in the order the default group lists them."),
            "hyperparameters": ref(f"{spec.torch_name}Hyperparameters"),
            "param_groups": {
                "anyOf": [
                    {"type": "array", "minItems": 1, "items": ref(f"{spec.torch_name}ParamGroup")},
                    {"type": "null"},
                ],
                "description": "Each param in exactly one group; default: one group with every param.",
            },
            "dtype": dtype_schema,
            "state_dict": {
                "anyOf": [ref(f"{spec.torch_name}StateDict_{dtype}"), {"type": "null"}],
                "description": "Optimizer state to start from (torch's layout).",
            },
            "step": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STEP,
                "description": "The step counter to start from (as in a checkpoint).",
            },
            "aggregation": {
                "anyOf": [ref("SyncAggregation"), ref("AsyncAggregation"), {"type": "null"}],
                "description": "Data-parallel training: how the session takes its workers' contributions.",
            },
            "clip_grad_norm": CLIP_GRAD_NORM_SCHEMA,
            "nonfinite": NONFINITE_SCHEMA,
            "lr_scheduler": {
                "anyOf": [
                    ref(config),
                    {
                        "type": "object",
                        "description": "A checkpoint's schedule, as it was: its state_dict and group_keys (one "
                        "object per param group) as GET .../checkpoint answers them, fitting the config.",
                        "properties": {
                            "config": ref(config),
                            "state_dict": {"type": "object"},
                            "group_keys": {"type": "array", "items": {"type": "object"}},
                        },
                        "required": ["config", "state_dict", "group_keys"],
                        "additionalProperties": False,
                    },
                    {"type": "null"},
                ],
                "description": "An LR schedule advanced after every step, or a checkpoint's; null for none.",
            },
        },
        "required": ["optimizer", "params"] if dtype == default_dtype else ["optimizer", "params", "dtype"],
        "additionalProperties": False,
    }


def _patch() -> Schema:
    hyperparameters = {"anyOf": [ref(f"{spec.torch_name}Hyperparameters") for spec in ALGORITHMS.values()]}
    group_change = {
        "anyOf": [
            {**_hyperparameters(spec), "properties": {**_param_group(spec)["properties"]}}
            for spec in ALGORITHMS.values()
        ],
        "description": "Hyperparameters to change in this group; `params`, if given, must be the group's own.",
    }
    param_groups = {
        "type": "array",
        "items": group_change,
        "description": "One entry for each of the session's groups, in order.",
    }
    settings = {
        "clip_grad_norm": CLIP_GRAD_NORM_SCHEMA,
        "nonfinite": NONFINITE_SCHEMA,
        "lr_scheduler": _lr_scheduler("LRSchedulerConfig"),
    }
    return {
        "type": "object",
        "description": "At most one of `hyperparameters` (every group) and `param_groups` (group by group), naming "
        "only the session's optimizer's hyperparameters; and the gradient settings to change. At least one field.",
        "oneOf": [
            {
                "properties": {"hyperparameters": hyperparameters, "param_groups": {"type": "null"}},
                "required": ["hyperparameters"],
            },
            {
                "properties": {"hyperparameters": {"type": "null"}, "param_groups": param_groups},
                "required": ["param_groups"],
            },
            {
                "properties": {"hyperparameters": {"type": "null"}, "param_groups": {"type": "null"}},
                "anyOf": [
                    {"required": ["clip_grad_norm"]},
                    {"required": ["nonfinite"]},
                    {"required": ["lr_scheduler"]},
                ],
            },
        ],
        "properties": {"hyperparameters": {}, "param_groups": {}, **settings},
        "additionalProperties": False,
    }


def request_schemas(*, default_dtype: str = "float32") -> dict[str, Schema]:
    """Every schema the request bodies use, by component name."""
    schemas: dict[str, Schema] = {
        "ParamName": {
            "type": "string",
            "pattern": f"^{PARAM_NAME.pattern}$",
            "description": "1 to 256 characters, none of them a control character.",
        },
        **lr_scheduler_schemas(),
    }
    for dtype in DTYPES:
        schemas[f"Number_{dtype}"] = _number(dtype)
        schemas[f"NumericList_{dtype}"] = _list(dtype)
        schemas[f"NumericArray_{dtype}"] = _array(dtype)
    variants = []
    for spec in ALGORITHMS.values():
        schemas[f"{spec.torch_name}Hyperparameters"] = _hyperparameters(spec)
        schemas[f"{spec.torch_name}ParamGroup"] = _param_group(spec)
        for dtype in DTYPES:
            schemas[f"{spec.torch_name}StateDict_{dtype}"] = _state_dict(spec, dtype)
            name = f"Create{spec.torch_name}Session_{dtype}"
            schemas[name] = _create(spec, dtype, default_dtype=default_dtype)
            variants.append(ref(name))
    schemas["CreateSessionRequest"] = {
        "description": "A new session: its optimizer, params and dtype; optionally hyperparameters, param groups, "
        "optimizer state and step counter. A checkpoint is one.",
        "oneOf": variants,
    }
    schemas["StepRequest"] = {
        "type": "object",
        "properties": {
            "grads": _arrays_by_name(
                "float64",
                "Gradients by param name, each of its param's shape (cast to the session's dtype, whose range they "
                "must fit); params left out are skipped.",
            ),
            "loss": {
                "type": "number",
                "description": "The loss the client computed for these gradients, kept with the step's metrics "
                "(finite).",
            },
            "worker": {
                "type": "string",
                "pattern": f"^{WORKER_ID.pattern}$",
                "description": "An aggregating session's contributor (required there, refused elsewhere).",
            },
            "based_on_step": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STEP,
                "description": "The step whose params the gradients were computed from.",
            },
            "weight": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_WEIGHT,
                "description": "How much the contribution counts (its examples, say); 1 by default.",
            },
        },
        "required": ["grads"],
        "dependentRequired": {"worker": ["based_on_step"], "based_on_step": ["worker"], "weight": ["worker"]},
        "additionalProperties": False,
    }
    schemas["LRSchedulerState"] = {
        "type": "object",
        "description": "torch's scheduler.state_dict() of the session's schedule, as GET .../lr_scheduler answers it.",
        "properties": {"state_dict": {"type": "object"}},
        "required": ["state_dict"],
        "additionalProperties": False,
    }
    schemas["SyncAggregation"] = {
        "type": "object",
        "description": "A round per step: closed by `workers` contributions, or by `min_workers` once `timeout_s` "
        "has passed since its first.",
        "properties": {
            "mode": {"const": "sync"},
            "workers": {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS},
            "min_workers": {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS, "description": "<= workers"},
            "timeout_s": {
                "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_SECONDS}, {"type": "null"}],
                "description": "Needed when min_workers < workers.",
            },
        },
        "required": ["mode", "workers"],
        "additionalProperties": False,
    }
    schemas["AsyncAggregation"] = {
        "type": "object",
        "description": "Every contribution a step of its own, refused when more than `max_staleness` steps stale.",
        "properties": {
            "mode": {"const": "async"},
            "max_staleness": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_STEP}, {"type": "null"}]},
            "staleness_weighting": {"enum": ["none", "inverse"]},
        },
        "required": ["mode"],
        "additionalProperties": False,
    }
    schemas["PatchSessionRequest"] = _patch()
    schemas["StateDictRequest"] = {
        "description": "The session's optimizer's state_dict, fitting its params (GET it for the layout).",
        "anyOf": [ref(f"{spec.torch_name}StateDict_float64") for spec in ALGORITHMS.values()],
    }
    return schemas


CREATE_EXAMPLE = {
    "optimizer": "rmsprop",
    "params": {"w": [[0.5, -0.25], [1.0, 2.0]], "b": [0.0, 0.1]},
    "hyperparameters": {"lr": 0.01, "momentum": 0.9},
    "param_groups": [{"params": ["w"]}, {"params": ["b"], "lr": 0.1}],
}
STEP_EXAMPLE = {"grads": {"w": [[0.1, -0.2], [0.3, 0.4]], "b": [0.01, -0.02]}, "loss": 0.6931}
PATCH_EXAMPLE = {"hyperparameters": {"lr": 0.005}}
