"""Large JSON is decoded and encoded in another process, with the same result and the same errors as
in the request's own thread; small JSON and safetensors never leave it."""

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
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


def process_of(_: str, __: Any) -> tuple[dict[str, Any], None]:
    """Stands in for the decoding in the worker, to learn which process ran it."""
    return {"pid": os.getpid()}, None


def test_json_over_the_threshold_is_decoded_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents_module, "decode_json_file", process_of)

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


def test_the_files_a_body_and_its_arrays_pass_through_to_another_process_are_removed_decoded_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the worker processes', read as they start
    monkeypatch.setattr(tempfile, "tempdir", None)  # this process's, read again

    decoded = in_worker_thread(lambda d: d.decode(JSON, BODY, array_paths=PATHS), processes=1, threshold=10)
    with pytest.raises(InvalidValue):
        in_worker_thread(
            lambda d: d.decode(JSON, b'{"grads": {"w": ["a", "b"]}}', array_paths=PATHS), processes=1, threshold=10
        )

    assert decoded["grads"]["w"].tolist() == [1.5, -2.0, 3.0]
    assert list(tmp_path.iterdir()) == []


def no_room(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_large_body_is_decoded_all_the_same_when_the_temporary_directory_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "mkstemp", no_room)

    decoded = in_worker_thread(lambda d: d.decode(JSON, BODY, array_paths=PATHS), processes=1, threshold=10)

    assert decoded["grads"]["w"].tolist() == [1.5, -2.0, 3.0]
    assert decoded["note"] == "kept"


def test_an_answer_encoded_in_another_process_is_the_one_encoded_in_thread() -> None:
    value = {"step": 3, "params": {"w": np.linspace(-1, 1, 500, dtype=np.float32)}}

    far = in_worker_thread(lambda d: d.encode(value, media_type=JSON), processes=1, threshold=100)

    assert far == dump_json(value)
