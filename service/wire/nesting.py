"""How deep a request's values may nest, checked without recursion.

JSON lets a client nest arrays and objects as deep as its parser allows (orjson: 1024
levels), and Python's own walks of such values (``repr`` in an error message, a recursive
check) stop at its recursion limit of about 1000 frames with a ``RecursionError``. These
bounds keep every value a request carries far below that, and the checks here walk with a
stack of their own, so the refusal is a 422 naming the field however deep the value goes.
"""

from collections.abc import Iterable
from typing import Any

from service.wire.errors import InvalidValue, Loc

MAX_ARRAY_DIMENSIONS = 32
"""An array (params, gradients, optimizer state) has at most this many dimensions: nested lists in
JSON, a tensor's shape in safetensors. numpy 1.x holds 32, 2.x 64; a param needs a few."""
MAX_DEPTH = 64
"""A document's other values (hyperparameters, param_groups, a state_dict's fields) nest at most
this many objects and arrays deep, the body itself being the first."""
NUMBER_TYPES = {int, float}
NOT_NUMBERS = "must be a number or rectangular nested lists of numbers"
AT_MOST_DIMENSIONS = f"an array has at most {MAX_ARRAY_DIMENSIONS} dimensions"


def check_nested_numbers(value: list[Any], loc: Loc) -> None:
    """Refuse ``value`` unless it is rectangular-looking nested lists, at most ``MAX_ARRAY_DIMENSIONS``
    deep, with only ints and floats as leaves (numpy would read ``true`` as 1.0). numpy finds the
    rest (ragged rows, empty ones)."""
    stack = [(value, 1)]
    while stack:
        rows, depth = stack.pop()
        if rows and isinstance(rows[0], list):
            if depth == MAX_ARRAY_DIMENSIONS:
                raise InvalidValue(loc, f"nests lists more than {MAX_ARRAY_DIMENSIONS} deep; {AT_MOST_DIMENSIONS}")
            if not all(isinstance(row, list) for row in rows):
                raise InvalidValue(loc, NOT_NUMBERS)
            stack.extend((row, depth + 1) for row in rows)
        elif not set(map(type, rows)) <= NUMBER_TYPES:
            raise InvalidValue(loc, NOT_NUMBERS)


def check_depth(document: dict[str, Any], loc: Loc = ("body",)) -> None:
    """Refuse a document whose objects and arrays (numpy arrays are leaves) nest deeper than ``MAX_DEPTH``,
    naming the path down to the first place that does."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, tuple(loc))]
    while stack:
        node, path = stack.pop()
        if len(path) - len(loc) >= MAX_DEPTH:
            raise InvalidValue(path, f"nests objects and arrays more than {MAX_DEPTH} deep")
        children: Iterable[tuple[str | int, Any]] = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((child, (*path, key)) for key, child in children if isinstance(child, dict | list))
