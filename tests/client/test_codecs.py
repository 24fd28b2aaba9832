"""The two wire formats, encoded by the client and decoded back as the service reads them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from optim_client.json_codec import JsonCodec, decode_json
from optim_client.safetensors_codec import SafetensorsCodec, decode_safetensors
from service.wire.safetensors_documents import document_from_safetensors

CREATE: dict[str, Any] = {
    "optimizer": "rprop",
    "dtype": "float32",
    "params": {"layer/0.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.asarray(1.5, np.float32)},
    "hyperparameters": {"lr": 0.1, "etas": (0.5, 1.2)},
    "param_groups": [{"params": ["layer/0.weight", "s"]}],
    "state_dict": {
        "state": {"0": {"step": 2.0, "prev": np.ones((2, 3), np.float32)}, "1": {"step": 1.0}},
        "param_groups": [{"lr": 0.1, "params": [0, 1]}],
    },
    "step": 2,
}


def test_a_binary_document_reads_back_the_same_on_the_service_and_in_the_client() -> None:
    body = SafetensorsCodec().encode(CREATE)
    for decoded in (document_from_safetensors(body), decode_safetensors(body)):
        assert decoded["optimizer"] == "rprop"
        assert decoded["hyperparameters"] == {"lr": 0.1, "etas": [0.5, 1.2]}
        assert decoded["step"] == 2
        assert decoded["params"]["layer/0.weight"].tobytes() == CREATE["params"]["layer/0.weight"].tobytes()
        assert decoded["params"]["s"].shape == ()
        assert decoded["state_dict"]["state"]["0"]["step"] == 2.0
        assert decoded["state_dict"]["state"]["0"]["prev"].shape == (2, 3)
        assert decoded["state_dict"]["state"]["1"] == {"step": 1.0}


@pytest.mark.parametrize("codec", [JsonCodec(), SafetensorsCodec()], ids=["json", "binary"])
def test_a_document_is_encoded_to_the_same_bytes_every_time(codec: JsonCodec) -> None:
    # A creation sent again under its Idempotency-Key must be the same bytes, or the service refuses it (422).
    bodies = {codec.encode(CREATE) for _ in range(20)}
    assert len(bodies) == 1


def test_a_binary_body_with_a_root_names_its_tensors_by_name_alone() -> None:
    grads = {"grads": {"w": np.ones(2, np.float64)}}
    body = SafetensorsCodec().encode(grads, root="grads")
    header = json.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])
    assert sorted(header) == ["w"]
    assert decode_safetensors(body, root="grads")["grads"]["w"].tolist() == [1.0, 1.0]


def test_json_writes_arrays_as_nested_lists_that_read_back_to_the_same_bits() -> None:
    document = decode_json(JsonCodec().encode(CREATE))
    weight = np.asarray(document["params"]["layer/0.weight"], dtype=np.float32)
    assert weight.tobytes() == CREATE["params"]["layer/0.weight"].tobytes()
    assert document["params"]["s"] == 1.5
    assert document["hyperparameters"]["etas"] == [0.5, 1.2]
    third = np.float32(1) / np.float32(3)
    assert np.asarray(decode_json(JsonCodec().encode({"x": np.asarray([third])}))["x"], np.float32)[0] == third


@pytest.mark.parametrize("codec", [JsonCodec(), SafetensorsCodec()], ids=["json", "binary"])
def test_a_non_finite_hyperparameter_is_refused_before_sending_naming_where(codec: JsonCodec) -> None:
    with pytest.raises(ValueError, match=r"body\.hyperparameters\.lr is nan"):
        codec.encode({"hyperparameters": {"lr": float("nan")}})
