"""The weighted mean of a round and the staleness scaling, against values worked out by hand."""

import itertools

import numpy as np
import pytest

from optim_core.aggregation import staleness_scaled, weighted_mean

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_sum_runs_in_ascending_worker_order_whatever_order_they_arrive_in(order: tuple[int, ...]) -> None:
    # In float64, 1e16 + 1 rounds back to 1e16: in the order a, b, c the 1 is lost and the mean is 0; in
    # the order a, c, b it survives and the mean is 1/3.
    contributions = [
        ("a", 1.0, {"w": np.array([1e16], dtype=np.float64)}),
        ("b", 1.0, {"w": np.array([1.0], dtype=np.float64)}),
        ("c", 1.0, {"w": np.array([-1e16], dtype=np.float64)}),
    ]
    mean = weighted_mean([contributions[index] for index in order], {"w": F64})
    assert mean["w"].tolist() == [0.0]


def test_worker_order_is_by_code_point_not_by_number() -> None:
    # "10" sorts before "9": the sum is 1e16 ("10"), then -1e16 ("9"), then 1 ("a"): 1 / 3.
    contributions = [
        ("9", 1.0, {"w": np.array([-1e16], dtype=np.float64)}),
        ("a", 1.0, {"w": np.array([1.0], dtype=np.float64)}),
        ("10", 1.0, {"w": np.array([1e16], dtype=np.float64)}),
    ]
    assert weighted_mean(contributions, {"w": F64})["w"].tolist() == [1.0 / 3.0]


def test_weights_count_each_contribution_and_the_total_divides() -> None:
    contributions = [
        ("a", 1.0, {"w": np.array([1.0, 2.0], dtype=np.float32)}),
        ("b", 3.0, {"w": np.array([3.0, 6.0], dtype=np.float32)}),
    ]
    mean = weighted_mean(contributions, {"w": F32})
    assert mean["w"].dtype == F32
    assert mean["w"].tolist() == [2.5, 5.0]


def test_a_param_some_workers_left_out_is_averaged_over_those_who_sent_it_and_one_nobody_sent_is_absent() -> None:
    contributions = [
        ("a", 2.0, {"w": np.array([4.0], dtype=np.float32), "b": np.array([1.0], dtype=np.float32)}),
        ("b", 1.0, {"w": np.array([1.0], dtype=np.float32)}),
    ]
    mean = weighted_mean(contributions, {"w": F32, "b": F32, "unused": F32})
    assert mean["w"].tolist() == [3.0]  # (2*4 + 1*1) / 3
    assert mean["b"].tolist() == [1.0]  # a's alone, weight and all
    assert "unused" not in mean


def test_the_mean_is_taken_in_float64_and_cast_once() -> None:
    # float32 cannot hold 16777217; two halves of it summed in float32 would round before the division.
    contributions = [
        ("a", 1.0, {"w": np.array([16777216.0], dtype=np.float32)}),
        ("b", 1.0, {"w": np.array([2.0], dtype=np.float32)}),
    ]
    mean = weighted_mean(contributions, {"w": F32})
    assert mean["w"].tolist() == [np.float32((16777216.0 + 2.0) / 2)]


def test_staleness_divides_by_one_plus_staleness_and_keeps_the_dtype() -> None:
    scaled = staleness_scaled({"w": np.array([3.0, -1.5], dtype=np.float32), "b": np.array([1.0], dtype=np.float64)}, 2)
    assert scaled["w"].dtype == F32
    assert scaled["b"].dtype == F64
    assert scaled["w"].tolist() == [1.0, -0.5]
    assert scaled["b"].tolist() == [1.0 / 3.0]
    fresh = staleness_scaled({"w": np.array([0.7], dtype=np.float32)}, 0)
    assert fresh["w"].tolist() == np.array([0.7], dtype=np.float32).tolist()
