"""Hooks for fuzzing the API with schemathesis (``tests/fuzz/run.sh`` loads them).

JSON Schema cannot say everything the server checks; the OpenAPI document says the rest in words. For
positive cases (requests the schema calls valid) these hooks make a generated request honour those
words too, so that the check that valid requests are accepted tests everything else:

- arrays are rectangular: nested lists are cut to the shortest at each depth;
- a pair is in order: ``step_sizes`` is sorted;
- each param of a create body is in exactly one param group: the groups are dealt the body's params;
- a create body's ``state_dict`` fits its params: left out (a checkpoint posted back, by the
  checkpoint -> create link, sends real ones);
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
from typing import Any

import numpy as np
import schemathesis
from schemathesis import Case, GenerationMode, HookContext

from optim_client.safetensors_codec import SafetensorsCodec, decode_safetensors

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


def _dealt_groups(groups: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The groups, with the params dealt out to them in turn (groups left without one are dropped)."""
    dealt = [{**group, "params": names[index :: len(groups)]} for index, group in enumerate(groups)]
    return [group for group in dealt if group["params"]]


def _honour_create(body: dict[str, Any]) -> dict[str, Any]:
    body = {**body, "params": _rectangular_map(body.get("params"))}
    body.pop("state_dict", None)
    if "hyperparameters" in body:
        body["hyperparameters"] = _ordered_pairs(body["hyperparameters"])
    groups = body.get("param_groups")
    if isinstance(groups, list) and groups and isinstance(body["params"], dict):
        body["param_groups"] = _dealt_groups([_ordered_pairs(group) for group in groups], list(body["params"]))
    return body


def _honour_patch(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    if isinstance(body.get("hyperparameters"), dict):
        body["hyperparameters"] = _ordered_pairs(body["hyperparameters"])
    if isinstance(body.get("param_groups"), list):
        body["param_groups"] = [_ordered_pairs(group) for group in body["param_groups"]]
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
