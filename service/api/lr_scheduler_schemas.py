"""An LR schedule's config as the OpenAPI document states it: one schema per torch class, as strict as
``optim_core/lr_schedules`` reads it (its arguments, their ranges, torch's defaults), whole numbers up to
``MAX_INTEGER`` as the service stores them.

What JSON Schema cannot say, the descriptions say: SequentialLR's milestones increase and number one
fewer than its schedulers, a OneCycleLR inside one lasts until the next milestone, a per-group list
has one value per param group, OneCycleLR's lrs (``max_lr / div_factor / final_div_factor``) are
finite, no phase of it has zero length, and its epochs * steps_per_epoch is at most ``MAX_INTEGER``.
OneCycleLR cycles momentum only where the optimizer has one: a create body's variant for an optimizer
without ``momentum`` or ``betas`` requires ``"cycle_momentum": false``.
"""

from typing import Any

from optim_core.lr_schedules.one_cycle import ANNEAL_STRATEGIES
from service.sessions.lr_scheduler import MAX_INTEGER

Schema = dict[str, Any]

SMALLEST_INVERTIBLE_EXCLUSIVE = 2.0**-1024
"""ConstantLR's ``factor`` must exceed this: the lr is divided by it at ``total_iters``, and ``1 / x`` is
finite for every float ``x`` above it and for none at or below."""


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _whole(minimum: int, description: str, default: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum, "maximum": MAX_INTEGER, "description": description}
    return schema if default is None else {**schema, "default": default}


def _number(description: str, default: float | None = None, **bounds: float) -> Schema:
    schema: Schema = {"type": "number", **bounds, "description": description}
    return schema if default is None else {**schema, "default": default}


def _number_or_per_group(schema: Schema) -> Schema:
    """torch's ``_format_param``: one number, or a list of one per param group."""
    item = {key: value for key, value in schema.items() if key not in ("description", "default")}
    return {
        "anyOf": [item, {"type": "array", "items": item, "minItems": 1}],
        "description": f"{schema['description']}: one number, or one per param group.",
        **({"default": schema["default"]} if "default" in schema else {}),
    }


def _config(name: str, properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "title": name,
        "properties": {"name": {"const": name}, **properties},
        "required": ["name", *required],
        "additionalProperties": False,
    }


GAMMA = _number("The factor each decay multiplies the lr by (> 0)", exclusiveMinimum=0)


def _single_configs() -> dict[str, Schema]:
    """The schedules other than OneCycleLR and SequentialLR, by component name."""
    return {
        "StepLRConfig": _config(
            "StepLR",
            {"step_size": _whole(1, "Decay every step_size steps."), "gamma": {**GAMMA, "default": 0.1}},
            ("step_size",),
        ),
        "MultiStepLRConfig": _config(
            "MultiStepLR",
            {
                "milestones": {
                    "type": "array",
                    "items": _whole(0, "A step at which to decay."),
                    "description": "The steps at which to decay, in any order; a step listed n times decays "
                    "by gamma ** n.",
                },
                "gamma": {**GAMMA, "default": 0.1},
            },
            ("milestones",),
        ),
        "ExponentialLRConfig": _config("ExponentialLR", {"gamma": GAMMA}, ("gamma",)),
        "CosineAnnealingLRConfig": _config(
            "CosineAnnealingLR",
            {
                "T_max": _whole(1, "The steps of half a cosine period."),
                "eta_min": _number("The lowest lr (>= 0)", 0.0, minimum=0),
            },
            ("T_max",),
        ),
        "LinearLRConfig": _config(
            "LinearLR",
            {
                "start_factor": _number("The first factor, in (0, 1]", 1 / 3, exclusiveMinimum=0, maximum=1),
                "end_factor": _number("The last factor, in [0, 1]", 1.0, minimum=0, maximum=1),
                "total_iters": _whole(1, "The steps over which the factor moves.", 5),
            },
        ),
        "ConstantLRConfig": _config(
            "ConstantLR",
            {
                "factor": _number(
                    "The factor until total_iters, in (0, 1] and above 2 ** -1024 (so its inverse is finite)",
                    1 / 3,
                    exclusiveMinimum=SMALLEST_INVERTIBLE_EXCLUSIVE,
                    maximum=1,
                ),
                "total_iters": _whole(1, "The steps the factor holds for.", 5),
            },
        ),
    }


def _one_cycle(*, momentum: bool) -> Schema:
    """OneCycleLR: ``total_steps``, or ``epochs`` and ``steps_per_epoch``, as two variants."""
    cycle_momentum: Schema = (
        {"type": "boolean", "default": True, "description": "Cycle the momentum (or betas' first) too."}
        if momentum
        else {"const": False, "description": "This optimizer has no momentum to cycle: false is required."}
    )
    required = () if momentum else ("cycle_momentum",)
    momentum_bound = {"minimum": 0, "exclusiveMaximum": 1}
    common: dict[str, Schema] = {
        "max_lr": _number_or_per_group(_number("The peak lr (> 0)", exclusiveMinimum=0)),
        "pct_start": _number(
            "The share of the steps spent rising, in (0, 1)", 0.3, exclusiveMinimum=0, exclusiveMaximum=1
        ),
        "anneal_strategy": {"enum": list(ANNEAL_STRATEGIES), "default": "cos"},
        "cycle_momentum": cycle_momentum,
        "base_momentum": _number_or_per_group(_number("The lowest momentum, in [0, 1)", 0.85, **momentum_bound)),
        "max_momentum": _number_or_per_group(_number("The highest momentum, in [0, 1)", 0.95, **momentum_bound)),
        "div_factor": _number("initial_lr = max_lr / div_factor (> 0)", 25.0, exclusiveMinimum=0),
        "final_div_factor": _number("min_lr = initial_lr / final_div_factor (> 0)", 1e4, exclusiveMinimum=0),
        "three_phase": {"type": "boolean", "default": False},
    }
    unused: Schema = {"type": "null", "description": "Not with the other way of counting the steps."}
    by_steps = _config(
        "OneCycleLR",
        {
            "total_steps": _whole(1, "The steps of the whole cycle."),
            "epochs": unused,
            "steps_per_epoch": unused,
            **common,
        },
        ("max_lr", "total_steps", *required),
    )
    by_epochs = _config(
        "OneCycleLR",
        {
            "epochs": _whole(
                1, f"With steps_per_epoch: total_steps = epochs * steps_per_epoch, at most {MAX_INTEGER}."
            ),
            "steps_per_epoch": _whole(1, "With epochs."),
            "total_steps": unused,
            **common,
        },
        ("max_lr", "epochs", "steps_per_epoch", *required),
    )
    return {
        "title": "OneCycleLR",
        "description": "The 1cycle policy, of total_steps or of epochs * steps_per_epoch steps (not both). Its lrs "
        "(max_lr / div_factor, and that / final_div_factor) must be finite, and pct_start must leave no phase of "
        "zero length; it takes total_steps steps, and refuses one more.",
        "anyOf": [by_steps, by_epochs],
    }


def _sequential(*, suffix: str) -> Schema:
    singles = [_ref(name) for name in _single_configs()] + [_ref(f"OneCycleLRConfig{suffix}")]
    return _config(
        "SequentialLR",
        {
            "schedulers": {
                "type": "array",
                "items": {"anyOf": singles},
                "minItems": 1,
                "description": "The schedules run one after another (not SequentialLR itself).",
            },
            "milestones": {
                "type": "array",
                "items": _whole(1, "The step at which the next schedule takes over."),
                "uniqueItems": True,
                "description": "Increasing, one fewer than schedulers; a OneCycleLR before a milestone must "
                "have at least as many steps as it runs.",
            },
        },
        ("schedulers", "milestones"),
    )


def lr_scheduler_schemas() -> dict[str, Schema]:
    """The schedule configs, by component name: ``LRSchedulerConfig`` (any optimizer's) and
    ``LRSchedulerConfigWithoutMomentum`` (for optimizers with neither ``momentum`` nor ``betas``)."""
    schemas = _single_configs()
    singles = [_ref(name) for name in schemas]
    for suffix, momentum in (("", True), ("WithoutMomentum", False)):
        schemas[f"OneCycleLRConfig{suffix}"] = _one_cycle(momentum=momentum)
        schemas[f"SequentialLRConfig{suffix}"] = _sequential(suffix=suffix)
        schemas[f"LRSchedulerConfig{suffix}"] = {
            "description": "An LR schedule advanced after every step: torch's class name and its arguments (no "
            "optimizer, last_epoch or verbose), torch's defaults for those left out. One that would set an lr "
            "that is not finite, at its start or at a step, is refused.",
            "anyOf": [*singles, _ref(f"OneCycleLRConfig{suffix}"), _ref(f"SequentialLRConfig{suffix}")],
        }
    return schemas
