"""RMSprop with eps inside the square root, against a direct numpy transliteration of the documented
formulas (Keras, TF1 and older Lucid), in float64:

    v <- alpha v + (1 - alpha) g^2
    centered:  g_avg <- alpha g_avg + (1 - alpha) g,  denominator sqrt(v - g_avg^2 + eps);  else sqrt(v + eps)
    momentum:  b <- momentum b + g / denominator,  theta <- theta - lr b;  else theta <- theta - lr g / denominator
"""

from typing import Any

import numpy as np
import pytest

from optim_core import RMSprop
from optim_core.errors import InvalidHyperparameterError


def _transliterated(
    theta: np.ndarray, grads: list[np.ndarray], *, lr: float, alpha: float, eps: float, momentum: float, centered: bool
) -> np.ndarray:
    theta = theta.copy()
    v, g_avg, b = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    for g in grads:
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            g_avg = alpha * g_avg + (1 - alpha) * g
            denominator = np.sqrt(v - g_avg * g_avg + eps)
        else:
            denominator = np.sqrt(v + eps)
        if momentum > 0:
            b = momentum * b + g / denominator
            theta = theta - lr * b
        else:
            theta = theta - lr * g / denominator
    return theta


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("eps", [1e-8, 0.1])
def test_eps_inside_the_square_root_follows_the_formulas(centered: bool, momentum: float, eps: float) -> None:
    rng = np.random.default_rng(11)
    theta = rng.standard_normal(50)
    grads = [rng.standard_normal(50) * 0.01 for _ in range(25)]  # small gradients: where eps's place shows
    optimizer = RMSprop(
        {"w": theta.copy()}, lr=0.01, alpha=0.9, eps=eps, momentum=momentum, centered=centered, eps_in_sqrt=True
    )
    for grad in grads:
        optimizer.step({"w": grad})
    expected = _transliterated(theta, grads, lr=0.01, alpha=0.9, eps=eps, momentum=momentum, centered=centered)
    np.testing.assert_allclose(optimizer.params["w"], expected, rtol=1e-12, atol=1e-15)
    outside = RMSprop({"w": theta.copy()}, lr=0.01, alpha=0.9, eps=eps, momentum=momentum, centered=centered)
    for grad in grads:
        outside.step({"w": grad})
    assert not np.allclose(outside.params["w"], expected, rtol=1e-6, atol=0)


def test_the_switch_is_in_a_group_only_when_on_and_a_state_dict_keeps_it() -> None:
    plain = RMSprop({"w": np.zeros(2)})
    assert "eps_in_sqrt" not in plain.param_groups[0]
    inside = RMSprop({"w": np.zeros(2)}, eps_in_sqrt=True)
    assert inside.param_groups[0]["eps_in_sqrt"] is True
    inside.step({"w": np.ones(2)})
    saved: dict[str, Any] = inside.state_dict()
    restored = RMSprop({"w": np.zeros(2)})
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["eps_in_sqrt"] is True
    torch_layout = plain.state_dict()
    assert "eps_in_sqrt" not in torch_layout["param_groups"][0]


def test_the_switch_is_a_bool() -> None:
    with pytest.raises(InvalidHyperparameterError, match="eps_in_sqrt"):
        RMSprop({"w": np.zeros(2)}, eps_in_sqrt=1)  # type: ignore[arg-type]
