"""The service's safetensors writer makes files that the safetensors library reads back exactly."""

from typing import Literal

import numpy as np
import pytest
from safetensors.numpy import load

from service.binary import read_safetensors
from service.safetensors_format import dump

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
