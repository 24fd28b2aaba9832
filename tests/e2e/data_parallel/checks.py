"""What the journals of a run must show, and the replay they must agree with."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from tests.e2e.data_parallel.journal import Entry
from tests.e2e.data_parallel.reduction import Contribution, inverse_staleness_weighted, weighted_mean
from tests.e2e.data_parallel.replay import Replay

ROUND_MOVED_ON = "round-moved-on"


def accepted_by_round(journals: Mapping[str, list[Entry]]) -> dict[int, list[Entry]]:
    """Every applied contribution of a synchronous run, by its round (its ``based_on_step``)."""
    rounds: dict[int, list[Entry]] = defaultdict(list)
    for entries in journals.values():
        for entry in entries:
            assert entry.answer is not None, f"{entry.sent} was never answered"
            if entry.accepted:
                rounds[entry.sent.based_on_step].append(entry)
    return dict(rounds)


def refused(journals: Mapping[str, list[Entry]]) -> list[Entry]:
    return [entry for entries in journals.values() for entry in entries if not entry.accepted]


def assert_moved_on(entry: Entry) -> int:
    """``entry`` was refused with 409 ``round-moved-on`` naming the session's step; that step."""
    answer = entry.answer
    assert answer is not None, f"{entry.sent} was never answered"
    assert answer.status == 409, f"{entry.sent}: {answer}"
    assert answer.problem_type is not None, f"{entry.sent}: {answer}"
    assert answer.problem_type.endswith(ROUND_MOVED_ON), f"{entry.sent}: {answer}"
    assert isinstance(answer.current_step, int), f"{entry.sent}: no current_step in {answer}"
    return answer.current_step


def assert_round_answered_alike(round_number: int, entries: list[Entry]) -> None:
    """Every contributor of the round got the same answer: the step after it, the same version (ETag),
    metrics and params; and the metrics count the round's contributors and their total weight."""
    first = entries[0].answer
    assert first is not None
    params = entries[0].params()
    for entry in entries:
        answer = entry.answer
        assert answer is not None
        where = f"round {round_number}, {entry.sent.worker}"
        assert answer.step == round_number + 1, f"{where}: step {answer.step}"
        assert answer.version == first.version, f"{where}: version {answer.version}, another got {first.version}"
        assert json.dumps(answer.metrics, sort_keys=True) == json.dumps(first.metrics, sort_keys=True), (
            f"{where}: metrics {answer.metrics}, another got {first.metrics}"
        )
        got = entry.params()
        assert sorted(got) == sorted(params), where
        for name, value in params.items():
            assert got[name].tobytes() == value.tobytes(), f"{where}: param {name!r} differs from another's answer"
    assert first.metrics is not None, f"round {round_number}: no metrics"
    telemetry = first.metrics["round"]
    assert telemetry["contributors"] == len(entries), f"round {round_number}: {telemetry}, {len(entries)} applied"
    assert telemetry["total_weight"] == sum(entry.sent.weight for entry in entries), f"round {round_number}"


def replay_rounds(replay: Replay, rounds: Mapping[int, list[Entry]], initial: Mapping[str, np.ndarray]) -> None:
    """Step the replay once per round with the round's weighted mean; after each, the round's answer must hold it."""
    for round_number in sorted(rounds):
        entries = rounds[round_number]
        contributions = [Contribution(entry.sent.worker, entry.sent.weight, entry.grads()) for entry in entries]
        replay.step(weighted_mean(contributions, initial))
        replay.assert_holds(entries[0].params(), f"the answer to round {round_number}")


def replay_async_steps(
    replay: Replay, journals: Mapping[str, list[Entry]], *, max_staleness: int, inverse: bool
) -> list[Entry]:
    """Step the replay with every applied contribution in the order of the steps the server numbered them;
    each answer's staleness must be ``step - 1 - based_on_step``, and its params the replay's. The applied ones."""
    applied = sorted(
        (entry for entries in journals.values() for entry in entries if entry.accepted),
        key=lambda entry: entry.answer.step if entry.answer is not None and entry.answer.step is not None else -1,
    )
    assert [entry.answer.step for entry in applied if entry.answer] == list(range(1, len(applied) + 1))
    for entry in applied:
        answer = entry.answer
        assert answer is not None
        assert answer.step is not None
        staleness = answer.step - 1 - entry.sent.based_on_step
        where = f"step {answer.step} ({entry.sent.worker}, based on {entry.sent.based_on_step})"
        assert answer.staleness == staleness, f"{where}: staleness {answer.staleness}, expected {staleness}"
        assert 0 <= staleness <= max_staleness, f"{where}: applied with staleness {staleness}"
        assert answer.metrics is not None, f"{where}: {answer}"
        assert answer.metrics.get("staleness") == staleness, f"{where}: metrics {answer.metrics}"
        grads = entry.grads()
        replay.step(inverse_staleness_weighted(grads, staleness) if inverse else grads)
        replay.assert_holds(entry.params(), f"the answer of {where}")
    for entry in refused(journals):
        current = assert_moved_on(entry)
        assert current - entry.sent.based_on_step > max_staleness, f"{entry.sent} refused at step {current}"
    return applied
