"""The service's safetensors writer makes files that the safetensors library reads back exactly, and its
reader reads the library's files, as views of the body, and refuses exactly the files the library refuses."""

import copy
import json
import random
from typing import Literal

import numpy as np
import pytest
from safetensors import deserialize
from safetensors.numpy import load, save

from service.buffers import join
from service.wire.safetensors_documents import read_safetensors
from service.wire.safetensors_file import MalformedFile, Unsupported, dump, dump_buffers, read

TENSORS = {
    "matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
    "scalar": np.array(2.5),
    "empty": np.zeros((0, 3), np.float32),
    "tail": np.linspace(-1, 1, 7),
    "params/with/slashes": np.array([np.finfo(np.float32).max, -0.0, np.finfo(np.float32).tiny], np.float32),
}


def test_the_library_reads_every_tensor_back_with_its_dtype_shape_and_bits() -> None:
    loaded = load(dump(TENSORS))

    assert set(loaded) == set(TENSORS)
    for name, tensor in TENSORS.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert loaded[name].tobytes() == tensor.tobytes(), name


def test_metadata_travels_in_the_header() -> None:
    _, metadata = read_safetensors(dump(TENSORS, {"step": "3", "optimizer": '"rmsprop"'}))

    assert metadata == {"step": "3", "optimizer": '"rmsprop"'}


def test_a_file_with_no_tensors_is_still_a_valid_file() -> None:
    assert load(dump({}, {"step": "1"})) == {}


@pytest.mark.parametrize("order", ["C", "F"])
def test_non_contiguous_arrays_are_written_in_row_major_order(order: Literal["C", "F"]) -> None:
    array = np.asarray(np.arange(12, dtype=np.float64).reshape(3, 4), order=order)[:, ::2]

    np.testing.assert_array_equal(load(dump({"x": array}))["x"], array)


LIBRARY_TENSORS: dict[str, np.ndarray] = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "f64": np.linspace(-1, 1, 5),
    "scalar": np.array(1.5, np.float32),
    "empty": np.zeros((0, 4), np.float64),
    "i8": np.array([-1, 0, 1], np.int8),
    "i64": np.arange(3, dtype=np.int64),
    "u8": np.arange(7, dtype=np.uint8),
    "bool": np.array([True, False]),
    "f16": np.array([0.5, -2.0], np.float16),
}


def test_the_reader_reads_what_the_library_writes_as_views_of_the_body() -> None:
    body = save(LIBRARY_TENSORS, metadata={"format": "pt", "step": "3"})

    tensors, metadata = read(body)

    assert metadata == {"format": "pt", "step": "3"}
    assert set(tensors) == set(LIBRARY_TENSORS)
    for name, expected in LIBRARY_TENSORS.items():
        actual = tensors[name]
        assert isinstance(actual, np.ndarray), name
        assert actual.dtype == expected.dtype, name
        assert actual.shape == expected.shape, name
        assert actual.tobytes() == expected.tobytes(), name
        assert not actual.flags.owndata, f"{name} is a copy, not a view of the body"
        assert not actual.flags.writeable, name


def test_a_dtype_numpy_lacks_comes_back_as_its_name() -> None:
    header = b'{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    tensors, _ = read(len(header).to_bytes(8, "little") + header + bytes(4))

    assert tensors == {"b": Unsupported("BF16", [2])}


def _library_accepts(body: bytes) -> bool:
    try:
        deserialize(body)  # type: ignore[no-untyped-call]  # the library's Rust half has no annotations
    except Exception:
        return False
    return True


def _reader_accepts(body: bytes) -> bool:
    try:
        read(body)
    except MalformedFile:
        return False
    return True


def _mutations(rng: random.Random, valid: bytes) -> list[bytes]:
    header_length = int.from_bytes(valid[:8], "little")
    header = json.loads(valid[8 : 8 + header_length])
    data = valid[8 + header_length :]
    mutated = []
    for _ in range(400):
        body = bytearray(valid)
        kind = rng.randrange(5)
        if kind == 0:  # a byte of the header or the data changed
            body[rng.randrange(len(body))] = rng.randrange(256)
        elif kind == 1:  # cut short or grown
            body = body[: rng.randrange(len(body))] if rng.random() < 0.5 else body + bytes(rng.randrange(1, 9))
        else:  # a field of a tensor's entry changed
            entry = copy.deepcopy(header)
            name = rng.choice([key for key in entry if key != "__metadata__"])
            field = rng.choice(["dtype", "shape", "data_offsets"])
            value = entry[name][field]
            if field == "dtype":
                entry[name][field] = rng.choice(["F32", "F64", "I8", "BF16", "X32", 3, None])
            elif field == "shape":
                entry[name][field] = rng.choice([[], [2], [*value, 1], [-1], ["2"], None, [2, 0]])
            else:
                delta = rng.choice([-4, -1, 1, 4])
                moved = rng.randrange(2)
                entry[name][field] = [offset + delta * (index == moved) for index, offset in enumerate(value)]
            text = json.dumps(entry).encode()
            body = bytearray(len(text).to_bytes(8, "little") + text + data)
        mutated.append(bytes(body))
    return mutated


def test_the_reader_refuses_exactly_the_files_the_library_refuses() -> None:
    rng = random.Random(5)
    valid = save(
        {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2)), "c": np.array([1, -1], np.int8)}, {"k": "v"}
    )
    disagreements = [
        (body[:200], _library_accepts(body))
        for body in _mutations(rng, valid)
        if _library_accepts(body) != _reader_accepts(body)
    ]

    assert not disagreements, f"{len(disagreements)} of 400 mutated files judged differently, e.g. {disagreements[:3]}"


def test_a_large_join_gives_the_same_bytes_as_bytes_join() -> None:
    buffers = dump_buffers({"w": np.random.default_rng(0).standard_normal(1 << 19), "s": np.array([1, 2], np.float32)})

    assert bytes(join(buffers)) == b"".join(buffers)
