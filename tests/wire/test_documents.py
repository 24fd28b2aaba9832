"""Large JSON is decoded and encoded in another process, with the same result and the same errors as
in the request's own thread; small JSON and safetensors never leave it."""

import os
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pytest

from service.wire import documents as documents_module
from service.wire.documents import Documents
from service.wire.errors import InvalidValue, MalformedBody
from service.wire.json_arrays import dump_json, parse_json_with_arrays
from service.wire.media_types import JSON

BODY = b'{"grads": {"w": [1.5, -2.0, 3.0]}, "note": "kept"}'
PATHS = [("grads", "*")]


def in_worker_thread(work: Callable[[Documents], Any], *, processes: int, threshold: int) -> Any:
    """``work(documents)`` in a worker thread of a running event loop, as a route runs it."""

    async def main() -> Any:
        documents = Documents(processes=processes, threshold_bytes=threshold)
        return await anyio.to_thread.run_sync(work, documents)

    return anyio.run(main)


def process_of(_: bytes, __: Any) -> dict[str, Any]:
    """Stands in for the parse in the worker, to learn which process ran it."""
    return {"pid": os.getpid()}


def test_json_over_the_threshold_is_decoded_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents_module, "parse_json_with_arrays", process_of)

    decoded = in_worker_thread(lambda d: d.decode(JSON, BODY, array_paths=PATHS), processes=1, threshold=10)

    assert decoded["pid"] != os.getpid()


def test_a_document_decoded_in_another_process_is_the_one_decoded_in_thread() -> None:
    far = in_worker_thread(lambda d: d.decode(JSON, BODY, array_paths=PATHS), processes=1, threshold=10)
    near = parse_json_with_arrays(BODY, PATHS)

    assert far.keys() == near.keys()
    assert far["note"] == near["note"]
    np.testing.assert_array_equal(far["grads"]["w"], near["grads"]["w"])
    assert far["grads"]["w"].dtype == near["grads"]["w"].dtype


def test_errors_raised_in_another_process_arrive_as_they_are() -> None:
    with pytest.raises(MalformedBody):
        in_worker_thread(
            lambda d: d.decode(JSON, b"{not json" + b" " * 20, array_paths=PATHS), processes=1, threshold=10
        )
    with pytest.raises(InvalidValue) as invalid:
        in_worker_thread(
            lambda d: d.decode(JSON, b'{"grads": {"w": ["a", "b"]}}', array_paths=PATHS), processes=1, threshold=10
        )
    assert invalid.value.loc == ("body", "grads", "w")


def test_an_answer_encoded_in_another_process_is_the_one_encoded_in_thread() -> None:
    value = {"step": 3, "params": {"w": np.linspace(-1, 1, 500, dtype=np.float32)}}

    far = in_worker_thread(lambda d: d.encode(value, media_type=JSON), processes=1, threshold=100)

    assert far == dump_json(value)
