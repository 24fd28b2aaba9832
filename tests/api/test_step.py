"""POST /step: the core's numbers, the step counter, ETags, Idempotency-Key and If-Match."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.api.conftest import (
    ClientFactory,
    assert_problem,
    assert_same_param_bits,
    assert_same_state_dict,
    checkpoint,
    core_optimizer,
    create_session,
    get_checkpoint,
    get_params,
    get_state_dict,
    held,
    ok,
    put_state_dict,
    same,
    send,
    step,
    to_json,
)

# Every test here runs over JSON and over safetensors (conftest.py's `transport`).
pytestmark = pytest.mark.usefixtures("transport")

SHAPES: dict[str, tuple[int, ...]] = {"w": (3, 4), "b": (4,), "s": ()}
from tests.optimizers import OPTIMIZERS  # noqa: E402

DTYPES = ["float32", "float64"]


def _initial(dtype: str, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {name: to_json(rng.normal(size=shape).astype(dtype)) for name, shape in SHAPES.items()}


def _body(optimizer: str, dtype: str = "float32", **extra: Any) -> dict[str, Any]:
    return {"optimizer": optimizer, "params": _initial(dtype), "dtype": dtype, **extra}


def _grads(rng: np.random.Generator, names: list[str] | str, dtype: str) -> dict[str, np.ndarray]:
    """Gradients for `names`, with exact zeros and sign changes in them."""
    grads = {}
    for name in names:
        grad = rng.normal(size=SHAPES[name]).astype(dtype)
        grads[name] = np.where(rng.random(SHAPES[name]) < 0.2, np.zeros_like(grad), grad)
    return grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_step_returns_the_new_step_count_and_the_params_the_core_computes(
    client: TestClient, optimizer: str, dtype: str
) -> None:
    body = _body(optimizer, dtype, hyperparameters={"lr": 0.05})
    core = core_optimizer(body)
    created = create_session(client, body)
    rng = np.random.default_rng(1)

    for n in range(1, 7):
        grads = _grads(rng, "wbs", dtype)
        core.step(grads)
        result = ok(step(client, created.id, grads))

        assert set(result) == {"step", "params", "metrics"}
        assert result["step"] == n
        assert_same_param_bits(result["params"], core.params, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_step_with_a_subset_of_grads_skips_the_others_exactly_like_the_core(
    client: TestClient, optimizer: str, dtype: str
) -> None:
    extra = {"hyperparameters": {"momentum": 0.5, "centered": True}} if optimizer == "rmsprop" else {}
    body = _body(optimizer, dtype, **extra)
    core = core_optimizer(body)
    created = create_session(client, body)
    rng = np.random.default_rng(2)

    for names in ["w", "bs", "ws", "s", "wbs", "b"]:
        before = {name: value.copy() for name, value in core.params.items()}
        grads = _grads(rng, names, dtype)
        core.step(grads)
        result = ok(step(client, created.id, grads))

        assert_same_param_bits(result["params"], core.params, dtype)
        for name in set(SHAPES) - set(names):
            assert held(result["params"][name], dtype).tobytes() == before[name].tobytes(), name
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), dtype)


def test_a_param_without_a_grad_gets_no_state_until_its_first_grad(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))

    ok(step(client, created.id, {"b": np.ones(4, np.float32)}))

    assert sorted(ok(get_state_dict(client, created.id))["state"]) == ["1"]


def test_the_step_counter_counts_step_requests_whatever_grads_they_carry(client: TestClient) -> None:
    created = create_session(client, _body("rmsprop"))
    rng = np.random.default_rng(3)

    numbers = [ok(step(client, created.id, _grads(rng, names, "float32")))["step"] for names in ["s", "w", "s", "bw"]]

    assert numbers == [1, 2, 3, 4]
    assert ok(client.get(created.url))["step"] == 4
    assert ok(get_params(client, created.id))["step"] == 4
    assert checkpoint(client, created.id)["step"] == 4


def test_get_params_returns_the_step_count_the_current_params_and_the_etag(client: TestClient) -> None:
    created = create_session(client, _body("rprop", "float64"))
    response = step(client, created.id, {"s": 1.0})
    stepped = ok(response)
    del stepped["metrics"]

    params = get_params(client, created.id)

    assert same(ok(params), stepped)
    assert params.headers["etag"] == response.headers["etag"]


def test_every_step_gives_a_new_etag_which_get_then_reports(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))
    etags = [created.etag]
    rng = np.random.default_rng(4)

    for names in ["w", "s", "wbs"]:
        response = step(client, created.id, _grads(rng, names, "float32"))
        ok(response)
        etags.append(response.headers["etag"])
        # The params, in the step's own representation, are those of the step's version.
        assert get_params(client, created.id).headers["etag"] == etags[-1]

    assert len(set(etags)) == len(etags), etags


def test_reads_do_not_change_the_etag(client: TestClient) -> None:
    created = create_session(client, _body("rmsprop"))
    client.get(created.url)
    for read in [get_params, get_state_dict, get_checkpoint]:
        ok(read(client, created.id))
    client.get(created.url)

    assert get_params(client, created.id).headers["etag"] == created.etag


def test_grads_given_as_json_ints_are_numbers(client: TestClient) -> None:
    body = _body("rmsprop")
    core = core_optimizer(body)
    created = create_session(client, body)
    grads = {"w": [[1, -2, 0, 3], [0, 1, 1, -1], [2, 2, -2, 0]], "b": [0, 1, -1, 5], "s": 7}
    core.step({name: np.asarray(value, dtype=np.float32) for name, value in grads.items()})

    result = ok(step(client, created.id, grads))

    assert_same_param_bits(result["params"], core.params, "float32")


def test_float32_session_rounds_float64_grads_to_float32_like_the_core(client: TestClient) -> None:
    body = _body("rmsprop", "float32")
    core = core_optimizer(body)
    created = create_session(client, body)
    grads = {"w": np.full((3, 4), 0.1), "b": np.array([1 / 3, -2 / 3, 1e-40, 1 + 2**-30]), "s": 2.0 / 7.0}
    core.step({name: np.asarray(value, dtype=np.float64) for name, value in grads.items()})

    result = ok(step(client, created.id, grads))

    assert_same_param_bits(result["params"], core.params, "float32")


def test_replaying_an_idempotency_key_returns_the_first_response_and_applies_nothing(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))
    grads = _grads(np.random.default_rng(5), "wbs", "float32")
    first = step(client, created.id, grads, **{"Idempotency-Key": "key-1"})
    after_first = checkpoint(client, created.id)

    again = step(client, created.id, grads, **{"Idempotency-Key": "key-1"})

    assert again.status_code == first.status_code == 200
    assert same(ok(again), ok(first))
    assert ok(again)["step"] == 1
    assert again.headers["etag"] == first.headers["etag"]
    assert same(checkpoint(client, created.id), after_first)


def test_a_replay_after_later_steps_still_returns_the_first_response_and_applies_nothing(client: TestClient) -> None:
    created = create_session(client, _body("rmsprop", "float64"))
    rng = np.random.default_rng(6)
    grads = _grads(rng, "wb", "float64")
    first = step(client, created.id, grads, **{"Idempotency-Key": "abc"})
    ok(step(client, created.id, _grads(rng, "ws", "float64")))
    ok(step(client, created.id, _grads(rng, "s", "float64"), **{"Idempotency-Key": "other"}))
    before = checkpoint(client, created.id)

    again = step(client, created.id, grads, **{"Idempotency-Key": "abc"})

    assert same(ok(again), ok(first))
    assert ok(again)["step"] == 1
    assert again.headers["etag"] == first.headers["etag"]
    assert same(checkpoint(client, created.id), before)
    assert ok(step(client, created.id, {"s": 1.0}))["step"] == 4


def test_an_idempotency_key_reused_with_a_different_body_is_rejected_and_changes_nothing(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))
    rng = np.random.default_rng(7)
    ok(step(client, created.id, _grads(rng, "w", "float32"), **{"Idempotency-Key": "k"}))
    before = checkpoint(client, created.id)

    response = step(client, created.id, _grads(rng, "w", "float32"), **{"Idempotency-Key": "k"})

    assert_problem(response, 422)
    assert same(checkpoint(client, created.id), before)


def test_idempotency_keys_are_per_session(client: TestClient) -> None:
    body = _body("rprop")
    first = create_session(client, body)
    second = create_session(client, body)
    grads = _grads(np.random.default_rng(8), "wbs", "float32")
    ok(step(client, first.id, grads, **{"Idempotency-Key": "shared"}))
    ok(step(client, first.id, {"s": 1.0}))
    core = core_optimizer(body)
    core.step(grads)

    result = ok(step(client, second.id, grads, **{"Idempotency-Key": "shared"}))

    assert result["step"] == 1
    assert_same_param_bits(result["params"], core.params, "float32")
    assert ok(client.get(second.url))["step"] == 1
    assert ok(client.get(first.url))["step"] == 2


def test_every_kept_idempotency_key_is_replayed(make_client: ClientFactory) -> None:
    client = make_client(idempotency_keys_kept=3)
    created = create_session(client, _body("rmsprop"))
    rng = np.random.default_rng(9)
    sent = [(key, _grads(rng, "wbs", "float32")) for key in ["a", "b", "c"]]
    firsts = [ok(step(client, created.id, grads, **{"Idempotency-Key": key})) for key, grads in sent]
    before = checkpoint(client, created.id)

    replays = [ok(step(client, created.id, grads, **{"Idempotency-Key": key})) for key, grads in reversed(sent)]

    assert same(replays, list(reversed(firsts)))
    assert same(checkpoint(client, created.id), before)


def test_first_responses_past_the_byte_budget_are_dropped_oldest_first_and_their_retries_are_409(
    make_client: ClientFactory,
) -> None:
    # Each response holds 1000 float32 params (4000 bytes, and a short header): two fit in 10000 bytes.
    client = make_client(idempotency_response_bytes_kept=10_000)
    rng = np.random.default_rng(10)
    created = create_session(client, {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(1000)}})
    sent = [(key, {"w": rng.standard_normal(1000)}) for key in ["a", "b", "c", "d"]]
    firsts = [ok(step(client, created.id, grads, **{"Idempotency-Key": key})) for key, grads in sent]
    before = checkpoint(client, created.id)

    for key, grads in sent[:2]:
        expired = assert_problem(step(client, created.id, grads, **{"Idempotency-Key": key}), 409)
        assert "step" in expired["detail"]
        assert str(sent.index((key, grads)) + 1) in expired["detail"]
    assert_problem(step(client, created.id, sent[1][1], **{"Idempotency-Key": "a"}), 422)
    replays = [ok(step(client, created.id, grads, **{"Idempotency-Key": key})) for key, grads in sent[2:]]

    assert same(replays, firsts[2:])
    assert same(checkpoint(client, created.id), before)
    assert ok(client.get(created.url))["step"] == 4


def test_a_response_too_large_to_copy_is_replayed_from_the_session_until_a_step_changes_its_params(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    database_url = new_database()
    client = make_client(database_url, idempotency_response_copy_max_bytes=0)
    rng = np.random.default_rng(11)
    created = create_session(client, {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(50)}})
    grads = {"w": rng.standard_normal(50)}
    first = step(client, created.id, grads, **{"Idempotency-Key": "big"})
    # Hyperparameters may change between a step and its retry; the params it answered do not.
    ok(send(client, "PATCH", created.url, {"hyperparameters": {"lr": 0.5}}))
    before = checkpoint(client, created.id)

    again = step(client, created.id, grads, **{"Idempotency-Key": "big"})

    assert same(ok(again), ok(first))
    assert again.headers["etag"] == first.headers["etag"]
    assert same(checkpoint(client, created.id), before)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT length(params) FROM idempotency_records")).scalar_one()
    finally:
        engine.dispose()
    assert stored == 0

    ok(step(client, created.id, {"w": rng.standard_normal(50)}))
    after = checkpoint(client, created.id)
    expired = assert_problem(step(client, created.id, grads, **{"Idempotency-Key": "big"}), 409)
    assert "step 1" in expired["detail"]
    assert "step 2" in expired["detail"]
    assert same(checkpoint(client, created.id), after)


def test_step_with_if_match_of_the_current_etag_is_applied(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))

    response = step(client, created.id, {"s": 1.0}, **{"If-Match": created.etag})

    assert ok(response)["step"] == 1
    assert ok(step(client, created.id, {"s": 1.0}, **{"If-Match": response.headers["etag"]}))["step"] == 2


def test_step_with_a_stale_if_match_is_412_and_changes_nothing(client: TestClient) -> None:
    created = create_session(client, _body("rprop"))
    ok(step(client, created.id, {"s": 1.0}))
    before = checkpoint(client, created.id)

    for etag in [created.etag, '"not-an-etag"', "garbage"]:
        assert_problem(step(client, created.id, {"s": 1.0}, **{"If-Match": etag}), 412)

    assert same(checkpoint(client, created.id), before)


@pytest.mark.parametrize("array_files_min_bytes", [0, 1 << 20], ids=["arrays-in-files", "arrays-in-the-row"])
def test_a_repeat_of_an_applied_step_with_its_key_and_if_match_returns_the_first_response_not_412(
    make_client: ClientFactory, array_files_min_bytes: int
) -> None:
    # The key answers before If-Match is checked: a client that repeats a step whose answer it lost sends the
    # ETag the step was made for, which the step itself has since made stale. (On SQLite, a session whose
    # arrays are in its row is stepped from the cached optimizer without reading its keys.)
    client = make_client(array_files_min_bytes=array_files_min_bytes)
    created = create_session(client, _body("rmsprop"))
    grads = _grads(np.random.default_rng(8), "wbs", "float32")
    headers = {"Idempotency-Key": "with-if-match", "If-Match": created.etag}
    first = step(client, created.id, grads, **headers)
    after_first = checkpoint(client, created.id)

    again = step(client, created.id, grads, **headers)

    assert again.status_code == first.status_code == 200
    assert same(ok(again), ok(first))
    assert again.headers["etag"] == first.headers["etag"]
    assert same(checkpoint(client, created.id), after_first)


def test_patch_put_and_delete_honour_if_match(client: TestClient) -> None:
    created = create_session(client, _body("rmsprop"))
    stale = created.etag
    ok(step(client, created.id, {"w": np.ones((3, 4))}))
    state_dict = ok(get_state_dict(client, created.id))
    before = checkpoint(client, created.id)
    patch = {"hyperparameters": {"lr": 0.5}}

    assert_problem(send(client, "PATCH", created.url, patch, headers={"If-Match": stale}), 412)
    assert_problem(put_state_dict(client, created.id, state_dict, **{"If-Match": stale}), 412)
    assert_problem(send(client, "DELETE", created.url, headers={"If-Match": stale}), 412)
    assert same(checkpoint(client, created.id), before)

    current = client.get(created.url).headers["etag"]
    patched = send(client, "PATCH", created.url, patch, headers={"If-Match": current})
    assert ok(patched)["param_groups"][0]["lr"] == 0.5
    put = put_state_dict(client, created.id, state_dict, **{"If-Match": patched.headers["etag"]})
    ok(put)
    assert send(client, "DELETE", created.url, headers={"If-Match": put.headers["etag"]}).status_code == 204
    assert client.get(created.url).status_code == 404


@pytest.mark.parametrize("dtype", DTYPES)
def test_patched_rmsprop_hyperparameters_take_effect_at_the_next_step_like_edited_core_param_groups(
    client: TestClient, dtype: str
) -> None:
    body = _body("rmsprop", dtype, param_groups=[{"params": ["w"]}, {"params": ["b", "s"], "lr": 0.02}])
    core = core_optimizer(body)
    created = create_session(client, body)
    rng = np.random.default_rng(10)
    edits: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({"hyperparameters": {"lr": 0.3}}, [{"lr": 0.3}, {"lr": 0.3}]),
        (
            {"param_groups": [{"momentum": 0.9, "centered": True}, {"weight_decay": 0.1, "alpha": 0.5}]},
            [{"momentum": 0.9, "centered": True}, {"weight_decay": 0.1, "alpha": 0.5}],
        ),
        ({"hyperparameters": {"maximize": True, "eps": 0.5}}, [{"maximize": True, "eps": 0.5}] * 2),
        ({"param_groups": [{"momentum": 0.0}, {"lr": 0.0}]}, [{"momentum": 0.0}, {"lr": 0.0}]),
    ]

    for patch, core_edits in edits:
        for names in ["wbs", "ws"]:
            grads = _grads(rng, names, dtype)
            core.step(grads)
            assert_same_param_bits(ok(step(client, created.id, grads))["params"], core.params, dtype)
        ok(send(client, "PATCH", created.url, patch))
        for group, edit in zip(core.param_groups, core_edits, strict=True):
            group.update(edit)

    grads = _grads(rng, "wbs", dtype)
    core.step(grads)
    assert_same_param_bits(ok(step(client, created.id, grads))["params"], core.params, dtype)
    assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_patched_rprop_lr_sets_the_first_step_size_of_params_that_get_state_afterwards(
    client: TestClient, dtype: str
) -> None:
    body = _body("rprop", dtype)
    core = core_optimizer(body)
    created = create_session(client, body)
    rng = np.random.default_rng(11)

    plan: list[tuple[str, dict[str, Any] | None]] = [
        ("w", {"hyperparameters": {"lr": 0.5}}),
        ("wb", {"hyperparameters": {"etas": [0.1, 2.0], "step_sizes": [0.01, 0.6]}}),
        ("wbs", {"param_groups": [{"maximize": True, "lr": 0.001}]}),
        ("wbs", None),
    ]
    for names, patch in plan:
        grads = _grads(rng, names, dtype)
        core.step(grads)
        assert_same_param_bits(ok(step(client, created.id, grads))["params"], core.params, dtype)
        if patch is not None:
            ok(send(client, "PATCH", created.url, patch))
            edit = patch.get("hyperparameters") or patch["param_groups"][0]
            core.param_groups[0].update({key: tuple(v) if isinstance(v, list) else v for key, v in edit.items()})

    assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), dtype)


def test_concurrent_steps_are_numbered_1_to_n_in_the_order_they_were_applied(client: TestClient) -> None:
    body = _body("rprop", "float64")
    created = create_session(client, body)
    rng = np.random.default_rng(12)
    all_grads = [_grads(rng, "wbs", "float64") for _ in range(24)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda grads: ok(step(client, created.id, grads)), all_grads))

    assert sorted(result["step"] for result in results) == list(range(1, 25))
    core = core_optimizer(body)
    for result, grads in sorted(zip(results, all_grads, strict=True), key=lambda pair: pair[0]["step"]):
        core.step(grads)
        assert_same_param_bits(result["params"], core.params, "float64")
    assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, "float64")


def test_a_large_step_that_overflows_is_refused_and_changes_nothing(client: TestClient) -> None:
    # Large enough for a slot file and a blocked kernel of many blocks.
    size = (4 << 20) // 8 + 1
    rng = np.random.default_rng(13)
    body = {"optimizer": "rmsprop", "params": {"w": to_json(rng.normal(size=size).astype("float32"))}}
    created = create_session(client, body)
    first, last = (rng.normal(size=size).astype("float32") for _ in range(2))
    core = core_optimizer(body)
    core.step({"w": first})
    assert_same_param_bits(ok(step(client, created.id, {"w": first}))["params"], core.params, "float32")
    before = get_checkpoint(client, created.id).content
    overflowing = first.copy()
    overflowing[-1] = 3e38  # finite in float32; (1 - alpha) * grad**2 is not

    assert_problem(step(client, created.id, {"w": overflowing}), 422, loc=["body", "grads"])

    assert get_checkpoint(client, created.id).content == before
    core.step({"w": last})
    assert_same_param_bits(ok(step(client, created.id, {"w": last}))["params"], core.params, "float32")
    assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, "float32")
