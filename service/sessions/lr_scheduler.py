"""A session's LR schedule: torch's schedulers (``optim_core/lr_schedules``) driving the session's param groups,
advanced once after every applied step, as ``scheduler.step()`` after ``optimizer.step()`` is in a torch loop.

The session keeps ``{"config": ..., "state_dict": ..., "group_keys": [...]}``: the schedule's config (torch's
class name and arguments), its ``state_dict()`` in torch's layout, and per group the keys the schedule keeps
in torch's param groups beside the optimizer's own (``initial_lr``, OneCycleLR's ``max_lr``, ...), which the
session's groups do not hold. JSON has no integer keys: MultiStepLR's ``milestones`` counts are stored by
their milestones as text and read back as integers.
"""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from optim_core import OptimCoreError, Optimizer
from optim_core.lr_schedules import Schedule, parse_schedule
from optim_core.lr_schedules.arguments import LARGEST_WHOLE
from service.sessions.errors import InvalidRequest
from service.sessions.optimizers import core_error

Groups = list[dict[str, Any]]


MAX_INTEGER = LARGEST_WHOLE
"""The largest integer a schedule's argument or counter may be: JSON's exact integers (and the step counter's)."""


def _bounded(value: Any, loc: tuple[str | int, ...]) -> None:
    """Refuse an integer past ``MAX_INTEGER`` anywhere in a parsed config (whose only ints are its whole
    arguments) or a state, naming where."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise InvalidRequest(loc, f"{value} is past the largest whole number taken here, {MAX_INTEGER}")
    if isinstance(value, dict):
        for key, item in value.items():
            _bounded(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _bounded(item, (*loc, index))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Counter | dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _from_json(state: Any, *, loc: tuple[str | int, ...]) -> Any:
    """A stored (or sent) state_dict with MultiStepLR's milestones keyed by integers again."""
    if isinstance(state, list):
        return [_from_json(item, loc=(*loc, index)) for index, item in enumerate(state)]
    if not isinstance(state, dict):
        return state
    restored = {}
    for key, value in state.items():
        if key == "milestones" and isinstance(value, dict):
            try:
                restored[key] = {int(milestone): count for milestone, count in value.items()}
            except ValueError:
                raise InvalidRequest((*loc, key), "milestones are keyed by whole numbers") from None
        else:
            restored[key] = _from_json(value, loc=(*loc, key))
    return restored


def _split(work: Groups, groups: Groups) -> tuple[Groups, list[dict[str, Any]]]:
    """The session's groups with what the schedule changed in them, and the keys it added of its own."""
    updated = [
        {**group, **{key: item[key] for key in group if key != "params"}}
        for group, item in zip(groups, work, strict=True)
    ]
    added = [
        {key: value for key, value in item.items() if key not in group}
        for group, item in zip(groups, work, strict=True)
    ]
    return updated, added


def _work_groups(groups: Groups, group_keys: list[dict[str, Any]] | None = None) -> Groups:
    keys = group_keys or [{} for _ in groups]
    return [
        {**{key: value for key, value in group.items() if key != "params"}, **extra}
        for group, extra in zip(groups, keys, strict=True)
    ]


def _setting(schedule: Schedule, added: list[dict[str, Any]]) -> dict[str, Any]:
    return {"config": schedule.config, "state_dict": _jsonable(schedule.state_dict()), "group_keys": added}


def started(
    config: object, groups: Groups, *, loc: tuple[str, ...] = ("body", "lr_scheduler")
) -> tuple[dict[str, Any], Groups]:
    """A new schedule from ``config`` started on the groups (torch's constructor: ``initial_lr`` from each
    group's lr, and the lrs of step 0), and the groups it leaves."""
    if not isinstance(config, dict):
        raise InvalidRequest(loc, "lr_scheduler must be an object {name, ...torch's arguments}, or null")
    try:
        schedule = parse_schedule(config)
        _bounded(schedule.config, loc)
        work = _work_groups(groups)
        schedule.start(work)
    except OptimCoreError as error:
        raise core_error(error, *loc[:-1]) from None
    updated, added = _split(work, groups)
    return _setting(schedule, added), updated


def _loaded(setting: Mapping[str, Any], state_dict: object, loc: tuple[str | int, ...]) -> Schedule:
    """The schedule of ``setting`` with ``state_dict`` loaded, which must be of as many groups as the session's."""
    schedule = parse_schedule(setting["config"])
    _bounded(state_dict, loc)
    try:
        schedule.load_state_dict(_from_json(state_dict, loc=loc))
    except OptimCoreError as error:
        raise InvalidRequest((*loc, *error.loc), error.message) from None
    groups = len(setting["group_keys"])
    if len(schedule.last_lr) != groups:
        raise InvalidRequest(
            loc, f"this state_dict is of {len(schedule.last_lr)} param groups; the session has {groups}"
        )
    return schedule


def restored(checkpoint: object, groups: Groups, *, loc: tuple[str, ...] = ("body", "lr_scheduler")) -> dict[str, Any]:
    """A schedule as a checkpoint holds it (``{"config", "state_dict", "group_keys"}``), checked; the groups
    are as the checkpoint left them."""
    if not isinstance(checkpoint, dict) or set(checkpoint) - {"config", "state_dict", "group_keys"}:
        raise InvalidRequest(loc, "a checkpoint's lr_scheduler is {config, state_dict, group_keys}")
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        raise InvalidRequest((*loc, "config"), "the schedule's config: {name, ...torch's arguments}")
    try:
        _bounded(parse_schedule(config).config, (*loc, "config"))
    except OptimCoreError as error:
        raise InvalidRequest((*loc, "config", *error.loc[1:]), error.message) from None
    group_keys = checkpoint.get("group_keys")
    if (
        not isinstance(group_keys, list)
        or len(group_keys) != len(groups)
        or not all(isinstance(k, dict) for k in group_keys)
    ):
        raise InvalidRequest((*loc, "group_keys"), "one object of the schedule's own keys per param group")
    schedule = _loaded(checkpoint, checkpoint.get("state_dict"), (*loc, "state_dict"))
    return _setting(schedule, group_keys)


def with_state_dict(setting: Mapping[str, Any], state_dict: object) -> dict[str, Any]:
    """The schedule with ``state_dict`` loaded (torch's ``scheduler.load_state_dict``: the lrs stay)."""
    schedule = _loaded(setting, state_dict, ("body", "state_dict"))
    return _setting(schedule, list(setting["group_keys"]))


def advanced(setting: Mapping[str, Any], groups: Groups) -> tuple[dict[str, Any], Groups]:
    """One ``scheduler.step()``: the schedule's new state and the groups it leaves."""
    schedule = _loaded(setting, setting["state_dict"], ("lr_scheduler", "state_dict"))
    work = _work_groups(groups, list(setting["group_keys"]))
    try:
        schedule.step(work)
    except OptimCoreError as error:
        raise core_error(error, "lr_scheduler") from None
    updated, added = _split(work, groups)
    return _setting(schedule, added), updated


def advance_optimizer(setting: Mapping[str, Any] | None, optimizer: Optimizer[Any, Any]) -> dict[str, Any] | None:
    """After an applied step: the schedule advanced, and the optimizer's groups set as it leaves them."""
    if setting is None:
        return None
    advanced_setting, groups = advanced(setting, optimizer.param_groups)
    optimizer.param_groups = groups
    return advanced_setting


def last_lr(setting: Mapping[str, Any]) -> list[float]:
    return list(_loaded(setting, setting["state_dict"], ("lr_scheduler", "state_dict")).last_lr)
