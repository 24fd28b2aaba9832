"""The OpenAPI document's LR schedule configs allow exactly what the server starts.

Each argument of each class, set to values around its ranges in an otherwise valid config, is allowed by
the document's schema exactly when the service starts the schedule on a session's groups. What the
schemas cannot say, their descriptions say; a refusal of a config the schema allows must be one of those.
"""

import copy
import math
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.api.request_schemas import request_schemas
from service.sessions.errors import InvalidRequest
from service.sessions.lr_scheduler import MAX_INTEGER, started

LARGEST = 1.7976931348623157e308
EDGES = [0, 0.0, 1, 1.0, -1, 2, 0.5, 0.3, 1 - 2**-53, 5e-324, 2.0**-1024, 5.56268464626801e-309, LARGEST]
EDGES += [MAX_INTEGER, MAX_INTEGER + 1, 2**64]
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70), st.sampled_from(EDGES)
)
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.sampled_from(["cos", "linear", "x", ""]),
    st.lists(NUMBERS, max_size=3),
    st.lists(st.one_of(NUMBERS, st.booleans(), st.none()), max_size=3),
)
BASES: dict[str, dict[str, Any]] = {
    "StepLR": {"step_size": 3, "gamma": 0.5},
    "MultiStepLR": {"milestones": [4, 2, 2], "gamma": 0.5},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingLR": {"T_max": 10, "eta_min": 0.001},
    "LinearLR": {"start_factor": 0.25, "end_factor": 1.0, "total_iters": 4},
    "ConstantLR": {"factor": 0.5, "total_iters": 4},
    "OneCycleLR": {
        "max_lr": 1.0,
        "total_steps": 10,
        "pct_start": 0.25,
        "anneal_strategy": "linear",
        "cycle_momentum": True,
        "base_momentum": 0.8,
        "max_momentum": 0.9,
        "div_factor": 10.0,
        "final_div_factor": 100.0,
        "three_phase": True,
    },
}
"""A valid config of each class, every argument given."""
OPTIONAL_ARGUMENTS = {"epochs": 2, "steps_per_epoch": 5}
"""OneCycleLR's arguments beside total_steps: given together, in place of it."""
GROUPS = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.0}]
DESCRIBED_REFUSALS = ("would set", "phase of no", "same length as param_groups", "epochs * steps_per_epoch must")
"""The refusals of configs the schema allows that its descriptions announce: an lr that overflows, a
OneCycleLR phase of zero length, a per-group list of another length than the groups, more epochs *
steps_per_epoch than a whole argument may be."""


@pytest.fixture(scope="module")
def config_schema() -> jsonschema_rs.Validator:
    """The schema of a config as the document's components (``request_schemas``) state it."""
    return jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/LRSchedulerConfig", "components": {"schemas": request_schemas()}}
    )


def _outcome(config: dict[str, Any]) -> str | None:
    """None when the service starts the schedule on GROUPS, else its refusal."""
    try:
        started(copy.deepcopy(config), [dict(group) for group in GROUPS])
    except InvalidRequest as error:
        return str(error)
    return None


def _check(validator: jsonschema_rs.Validator, config: dict[str, Any]) -> None:
    refusal = _outcome(config)
    allowed = validator.is_valid(config)
    if allowed and refusal is not None:
        assert any(words in refusal for words in DESCRIBED_REFUSALS), (config, refusal)
    else:
        assert allowed == (refusal is None), (config, refusal)


CASES = [(name, key) for name, base in BASES.items() for key in (*base, "name", "unknown")]
CASES += [("OneCycleLR", key) for key in OPTIONAL_ARGUMENTS]


@pytest.mark.parametrize(("name", "key"), CASES)
@given(value=VALUES)
@example(value=None)
def test_an_argument_is_allowed_by_the_document_exactly_when_the_schedule_starts(
    config_schema: jsonschema_rs.Validator, name: str, key: str, value: object
) -> None:
    config = {"name": name, **BASES[name]}
    if key in OPTIONAL_ARGUMENTS:
        config.pop("total_steps")
        config.update(OPTIONAL_ARGUMENTS)
    config[key] = value
    _check(config_schema, config)


@pytest.mark.parametrize("key", ["total_steps", "epochs", "steps_per_epoch"])
def test_a_one_cycle_takes_total_steps_or_epochs_and_steps_per_epoch(
    config_schema: jsonschema_rs.Validator, key: str
) -> None:
    config = {"name": "OneCycleLR", **BASES["OneCycleLR"], **OPTIONAL_ARGUMENTS}
    _check(config_schema, config)
    del config[key]
    _check(config_schema, config)


MILESTONES = st.one_of(st.integers(-1, 30), st.sampled_from([2.0, 2.5, True, None, "3", MAX_INTEGER + 1]))


@given(children=st.lists(st.sampled_from(sorted(BASES)), max_size=4), milestones=st.lists(MILESTONES, max_size=4))
def test_a_sequence_is_allowed_exactly_when_it_starts_but_for_its_described_milestones(
    config_schema: jsonschema_rs.Validator, children: list[str], milestones: list[Any]
) -> None:
    """The milestones' order and count are said in words: a sequence the schema allows starts once its
    milestones are made to increase and to number one fewer than its schedulers."""
    schedulers = [{"name": name, **BASES[name]} for name in children]
    config = {"name": "SequentialLR", "schedulers": schedulers, "milestones": milestones}
    if not config_schema.is_valid(config):
        assert _outcome(config) is not None, config
        return
    described = sorted(milestones)[: len(schedulers) - 1]
    config = {"name": "SequentialLR", "schedulers": schedulers[: len(described) + 1], "milestones": described}
    assert config_schema.is_valid(config)
    assert _outcome(config) is None, config


def test_a_nested_sequence_is_refused_by_both(config_schema: jsonschema_rs.Validator) -> None:
    inner = {"name": "SequentialLR", "schedulers": [{"name": "ExponentialLR", "gamma": 0.5}], "milestones": []}
    config = {"name": "SequentialLR", "schedulers": [inner], "milestones": []}
    assert not config_schema.is_valid(config)
    assert _outcome(config) is not None
    assert config_schema.is_valid(inner)
    assert _outcome(inner) is None


@pytest.mark.parametrize("optimizer", ["rprop", "adagrad", "rmsprop", "sgd", "adam", "adamw"])
def test_a_create_body_cycles_momentum_only_where_the_optimizer_has_it(client: Any, optimizer: str) -> None:
    document = client.get("/openapi.json").json()
    schema = document["components"]["schemas"][f"Create{_torch_name(document, optimizer)}Session_float32"]
    validator = jsonschema_rs.validator_for({**schema, "components": document["components"]})
    config = {"name": "OneCycleLR", "max_lr": 0.5, "total_steps": 10}
    body = {"optimizer": optimizer, "params": {"w": [1.0, 2.0]}, "lr_scheduler": config}
    response = client.post("/v1/sessions", json=body)
    assert validator.is_valid(body) == (response.status_code == 201), response.text
    without = {**body, "lr_scheduler": {**config, "cycle_momentum": False}}
    assert validator.is_valid(without)
    assert client.post("/v1/sessions", json=without).status_code == 201


def _torch_name(document: dict[str, Any], optimizer: str) -> str:
    for name, schema in document["components"]["schemas"].items():
        variant = name.startswith("Create") and name.endswith("Session_float32")
        if variant and schema["properties"]["optimizer"].get("const") == optimizer:
            return str(name).removeprefix("Create").removesuffix("Session_float32")
    raise AssertionError(optimizer)


def test_the_edges_are_what_the_schema_says(config_schema: jsonschema_rs.Validator) -> None:
    """The one bound that is not a round number: ConstantLR's factor, whose inverse must be finite."""
    smallest = math.nextafter(2.0**-1024, 1)
    assert math.isfinite(1 / smallest)
    assert not math.isfinite(1 / 2.0**-1024)
    assert config_schema.is_valid({"name": "ConstantLR", "factor": smallest})
    assert not config_schema.is_valid({"name": "ConstantLR", "factor": 2.0**-1024})


ECHOED = [
    *({"name": name, **base} for name, base in BASES.items()),
    {"name": "OneCycleLR", "max_lr": [0.5, 0.25], "epochs": 2, "steps_per_epoch": 5},
    {
        "name": "SequentialLR",
        "schedulers": [{"name": "LinearLR"}, {"name": "OneCycleLR", "max_lr": 1.0, "total_steps": 9}],
        "milestones": [3],
    },
]


@pytest.mark.parametrize("config", ECHOED, ids=lambda config: str(config["name"]))
def test_the_config_a_session_shows_may_be_sent_back(config_schema: jsonschema_rs.Validator, config: Any) -> None:
    """A summary shows its schedule's config with torch's defaults filled in (and OneCycleLR's unused way of
    counting as null); a PATCH may send it back as it is."""
    setting, _ = started(copy.deepcopy(config), [dict(group) for group in GROUPS])

    assert config_schema.is_valid(setting["config"]), setting["config"]
