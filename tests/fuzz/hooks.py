"""Hooks for fuzzing the API with schemathesis (``tests/fuzz/run.sh`` loads them).

JSON Schema cannot say everything the server checks; the OpenAPI document says the rest in words. For
positive cases (requests the schema calls valid) these hooks make a generated request honour those
words too, so that the check that valid requests are accepted tests everything else:

- arrays are rectangular: nested lists are cut to the shortest at each depth;
- a pair is in order: ``step_sizes`` is sorted;
- a flag's companions agree with it, in a group as it inherits from the body's hyperparameters:
  SGD's ``nesterov`` with a momentum over 0 and no dampening, ``fused`` with neither
  ``differentiable`` nor ``foreach``;
- each param of a create body is in exactly one param group: the groups are dealt the body's params;
- a create body's ``state_dict`` fits its params: left out (a checkpoint posted back, by the
  checkpoint -> create link, sends real ones);
- an LR schedule's config keeps the rules its descriptions state: SequentialLR's milestones increase,
  number one fewer than its schedulers, and leave a OneCycleLR inside it enough steps; a per-group
  list has one value per group; the lrs a schedule sets are finite (OneCycleLR's, and MultiStepLR's
  at a milestone 0), and none of OneCycleLR's phases is empty; a
  checkpoint's schedule is left out (the checkpoint -> create link sends real ones);
- a synchronous aggregation's ``min_workers`` is at most its ``workers``, and below them comes with a
  ``timeout_s``;
- a list's ``cursor`` is one the server issued: left out (the next-page link sends real ones);
- an ``Idempotency-Key`` names one request: suffixed with a digest of the request.

Bodies and answers in safetensors (docs/binary.md) are the JSON documents, encoded: the document's
schema is the same in both media types, so each generated document is sent as a safetensors file (its
numeric arrays as tensors) when the case picks that media type, and a binary answer is read back into
its document, to be checked against the same schema.
"""

import hashlib
import itertools
import json
import math
from typing import Any

import numpy as np
import schemathesis
from schemathesis import Case, GenerationMode, HookContext
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.schemas import OpenApiSchema

from optim_client.safetensors_codec import SafetensorsCodec, decode_safetensors
from optim_core.lr_schedules.one_cycle_phases import empty_phase_reached, schedule_phases

MAX_IDEMPOTENCY_KEY = 255
SAFETENSORS = "application/vnd.safetensors"
ARRAY_ROOTS = {"POST /v1/sessions/{session_id}/step": "grads"}
"""Operations whose safetensors body names its tensors by param name alone, and the map they hold."""
PARAMS_ANSWERS = {"POST /v1/sessions", "POST /v1/sessions/{session_id}/step", "GET /v1/sessions/{session_id}/params"}
"""Operations whose safetensors answer names its tensors (the params) by param name alone."""
ARRAY_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "POST /v1/sessions": (("params", "*"), ("state_dict", "state", "*", "*")),
    "POST /v1/sessions/{session_id}/step": (("grads", "*"),),
    "PUT /v1/sessions/{session_id}/state_dict": (("state", "*", "*"),),
}
"""Where each operation's body holds arrays (``*``: any key; a state's ``step`` is a number, not an array)."""
LINKS_SEND_BODIES_WHOLE = {"x-schemathesis": {"merge_body": False}}
"""A link's body replaces the generated one rather than merging into it: a step's gradients are the
params it names, not those and some generated names besides."""


BINARY_REQUESTS = itertools.count()


def _label(case: Case[Any]) -> str:
    return f"{case.method.upper()} {case.operation.path}"


def _positive(case: Case[Any]) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, default=repr).encode()).hexdigest()


def rectangular(value: Any) -> Any:
    """Nested lists cut to the shortest list at each depth (a number stays as it is)."""
    if not isinstance(value, list) or not value or not all(isinstance(item, list) for item in value):
        return value
    shortest = min(len(item) for item in value)
    rows = [rectangular(item[:shortest]) for item in value]
    return _same_depth(rows)


def _same_depth(rows: list[Any]) -> list[Any]:
    """The rows, each of another shape than the first replaced by the first (a ragged depth)."""
    shape = np.shape(rows[0])
    return [row if np.shape(row) == shape else rows[0] for row in rows]


def _rectangular_map(arrays: Any) -> Any:
    if not isinstance(arrays, dict):
        return arrays
    return {name: rectangular(value) for name, value in arrays.items()}


def _ordered_pairs(group: Any) -> Any:
    if isinstance(group, dict) and isinstance(group.get("step_sizes"), list) and len(group["step_sizes"]) == 2:
        return {**group, "step_sizes": sorted(group["step_sizes"])}
    return group


def _companions(settings: Any, inherited: dict[str, Any]) -> Any:
    """``settings`` (a group's, or the hyperparameters) with the keys its flags need beside them."""
    if not isinstance(settings, dict):
        return settings
    effective, honoured = {**inherited, **settings}, dict(settings)
    if effective.get("nesterov") is True:
        momentum = effective.get("momentum")
        if not isinstance(momentum, (int, float)) or momentum <= 0:
            honoured["momentum"] = 0.9
        if effective.get("dampening", 0) != 0:
            honoured["dampening"] = 0.0
    if effective.get("fused") is True:
        if effective.get("differentiable") is True:
            honoured["differentiable"] = False
        if effective.get("foreach") is True:
            honoured["foreach"] = None
    return honoured


def _honour_settings(hyperparameters: Any, groups: Any) -> tuple[Any, Any]:
    """The hyperparameters and groups with their pairs in order and their flags' companions."""
    hyperparameters = _companions(_ordered_pairs(hyperparameters), {})
    inherited = hyperparameters if isinstance(hyperparameters, dict) else {}
    if isinstance(groups, list):
        groups = [_companions(_ordered_pairs(group), inherited) for group in groups]
    return hyperparameters, groups


def _dealt_groups(groups: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The groups, with the params dealt out to them in turn (groups left without one are dropped)."""
    dealt = [{**group, "params": names[index :: len(groups)]} for index, group in enumerate(groups)]
    return [group for group in dealt if group["params"]]


def _honour_create(body: dict[str, Any]) -> dict[str, Any]:
    body = {**body, "params": _rectangular_map(body.get("params"))}
    body.pop("state_dict", None)
    hyperparameters, groups = _honour_settings(body.get("hyperparameters"), body.get("param_groups"))
    if "hyperparameters" in body:
        body["hyperparameters"] = hyperparameters
    if isinstance(groups, list) and groups and isinstance(body["params"], dict):
        body["param_groups"] = _dealt_groups(groups, list(body["params"]))
    aggregation = body.get("aggregation")
    if isinstance(aggregation, dict) and aggregation.get("mode") == "sync":
        body["aggregation"] = _honour_sync(aggregation)
    schedule = body.get("lr_scheduler")
    if isinstance(schedule, dict) and "config" in schedule:
        body.pop("lr_scheduler")
    elif isinstance(schedule, dict):
        group_count = len(body["param_groups"]) if isinstance(body.get("param_groups"), list) else 1
        body["lr_scheduler"] = _honour_schedule(schedule, group_count)
    return body


def _honour_sync(aggregation: dict[str, Any]) -> dict[str, Any]:
    aggregation = dict(aggregation)
    workers = aggregation["workers"]
    if aggregation.get("min_workers", workers) > workers:
        aggregation["min_workers"] = workers
    if aggregation.get("min_workers", workers) < workers and aggregation.get("timeout_s") is None:
        aggregation["timeout_s"] = 5.0
    return aggregation


def _honour_schedule(config: dict[str, Any], group_count: int) -> dict[str, Any]:
    if config.get("name") == "OneCycleLR":
        return _honour_one_cycle(config, group_count)
    if config.get("name") == "MultiStepLR" and 0 in config["milestones"] and config.get("gamma", 0.1) > 1:
        return {**config, "gamma": 0.5}  # decaying at the start, a gamma over 1 could overflow an lr
    if config.get("name") != "SequentialLR" or not isinstance(config.get("schedulers"), list):
        return config
    schedulers = [_honour_schedule(child, group_count) for child in config["schedulers"]]
    milestones = sorted(config.get("milestones", []))[: len(schedulers) - 1]
    schedulers = schedulers[: len(milestones) + 1]
    for index, milestone in enumerate(milestones):
        child = schedulers[index]
        if child.get("name") == "OneCycleLR":
            begins = milestones[index - 1] if index else 0
            steps = child.get("total_steps") or child.get("epochs", 1) * child.get("steps_per_epoch", 1)
            child = {key: value for key, value in child.items() if key not in ("epochs", "steps_per_epoch")}
            schedulers[index] = {**child, "total_steps": max(steps, milestone - begins)}
    return {**config, "schedulers": schedulers, "milestones": milestones}


def _honour_one_cycle(config: dict[str, Any], group_count: int) -> dict[str, Any]:
    config = dict(config)
    for key in ("max_lr", "base_momentum", "max_momentum"):
        if isinstance(config.get(key), list):
            config[key] = list(itertools.islice(itertools.cycle(config[key]), group_count))
    peaks = config["max_lr"] if isinstance(config["max_lr"], list) else [config["max_lr"]]
    with np.errstate(over="ignore"):
        lowest = [peak / config.get("div_factor", 25.0) / config.get("final_div_factor", 1e4) for peak in peaks]
        highest = [peak / config.get("div_factor", 25.0) for peak in peaks]
    if not all(math.isfinite(lr) for lr in (*lowest, *highest)):
        config["div_factor"], config["final_div_factor"] = 25.0, 1e4
    total_steps = config.get("total_steps") or config["epochs"] * config["steps_per_epoch"]
    phases = schedule_phases(total_steps, config.get("pct_start", 0.3), config.get("three_phase", False))
    if empty_phase_reached(phases, total_steps) is not None:
        config["pct_start"] = 0.3
    return config


def _honour_patch(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    hyperparameters, groups = _honour_settings(body.get("hyperparameters"), body.get("param_groups"))
    for key, value in (("hyperparameters", hyperparameters), ("param_groups", groups)):
        if key in body:
            body[key] = value
    return body


def _honour_state_dict(body: dict[str, Any]) -> dict[str, Any]:
    state = body.get("state")
    if not isinstance(state, dict):
        return body
    return {**body, "state": {key: _rectangular_map(entry) for key, entry in state.items()}}


def _as_arrays(document: dict[str, Any], label: str) -> dict[str, Any]:
    """The document with its numeric arrays as numpy arrays, as the server reads them from tensors."""
    dtype = np.float32 if label == "POST /v1/sessions" and document.get("dtype", "float32") == "float32" else np.float64
    converted = dict(document)
    for path in ARRAY_PATHS.get(label, ()):
        _convert_at(converted, path, np.dtype(dtype))
    return converted


def _convert_at(node: dict[str, Any], path: tuple[str, ...], dtype: np.dtype[Any]) -> None:
    head, rest = path[0], path[1:]
    keys = [key for key in node if key != "step" or rest] if head == "*" else [head] if head in node else []
    for key in keys:
        if rest:
            if isinstance(node[key], dict):
                node[key] = dict(node[key])
                _convert_at(node[key], rest, dtype)
        elif not isinstance(node[key], bool):
            try:
                with np.errstate(over="ignore"):
                    node[key] = np.asarray(node[key], dtype=dtype)
            except (ValueError, TypeError, OverflowError):
                pass  # not an array: it travels as metadata, and the server says what is wrong with it


@schemathesis.serializer(SAFETENSORS)
def safetensors_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A generated document as a safetensors file: its numeric arrays as tensors of its dtype (float64 where
    the session's is unknown), anything else as metadata."""
    label = _label(ctx.case)
    if isinstance(value, dict):
        document = _as_arrays(value, label)
        for root in (ARRAY_ROOTS.get(label), None):
            try:
                return bytes(SafetensorsCodec().encode(document, root=root))
            except Exception:
                continue  # try it with arrays named by path, then as JSON
    return json.dumps(value).encode()


@schemathesis.deserializer(SAFETENSORS)
def document_from_safetensors(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """A binary answer as the document it carries, its arrays as nested lists (for the links that read it)."""
    label = f"{ctx.operation.method.upper()} {ctx.operation.path}"
    document = decode_safetensors(response.content, root="params" if label in PARAMS_ANSWERS else None)
    return _lists(document)


def _lists(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    return value


def _link_bodies_as_json() -> None:
    """A body a link gives whole (``merge_body: false``) reaches schemathesis' case without a media type,
    and for an operation that reads two (JSON and safetensors) schemathesis then raises "Can not detect
    appropriate media type" inside its stateful phase. A link's body is a JSON document, so such a case
    is sent as JSON; any other case keeps schemathesis' choice."""
    choose = OpenApiSchema._case_media_type

    def media_type(self: OpenApiSchema, operation: Any, body: Any, chosen: str | None) -> str | None:
        if chosen is None and body is not NOT_SET and len(operation.get_request_payload_content_types()) > 1:
            return "application/json"
        return choose(self, operation, body, chosen)

    OpenApiSchema._case_media_type = media_type  # type: ignore[method-assign,assignment]


_link_bodies_as_json()


@schemathesis.hook
def before_load_schema(context: HookContext, raw_schema: dict[str, Any]) -> None:
    for operations in raw_schema.get("paths", {}).values():
        for operation in operations.values():
            for answer in operation.get("responses", {}).values():
                for link in answer.get("links", {}).values():
                    if "requestBody" in link:
                        link.update(LINKS_SEND_BODIES_WHOLE)


@schemathesis.hook
def map_case(context: HookContext, case: Case[Any]) -> Case[Any]:
    if not _positive(case):
        return case
    label = _label(case)
    body = case.body
    if isinstance(body, dict):
        if label == "POST /v1/sessions":
            body = _honour_create(body)
        elif label == "PATCH /v1/sessions/{session_id}":
            body = _honour_patch(body)
        elif label in ARRAY_ROOTS:
            body = {**body, "grads": _rectangular_map(body.get("grads"))}
        elif label == "PUT /v1/sessions/{session_id}/state_dict":
            body = _honour_state_dict(body)
        case.body = body
    if label == "GET /v1/sessions" and case.query:
        case.query = {key: value for key, value in case.query.items() if key != "cursor"}
    headers = case.headers
    for name in list(headers or ()):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            # safetensors writes a file's metadata in any order, so the same document is other bytes each
            # time it is encoded: each binary request gets a key of its own.
            request = [label, case.path_parameters, case.media_type, body]
            suffix = (
                "-" + _digest([*request, next(BINARY_REQUESTS)] if case.media_type == SAFETENSORS else request)[:16]
            )
            headers[name] = headers[name][: MAX_IDEMPOTENCY_KEY - len(suffix)] + suffix
    return case
