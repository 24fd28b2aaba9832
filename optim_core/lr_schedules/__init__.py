"""Learning-rate schedules with the numbers of torch 2.13's ``torch.optim.lr_scheduler``.

A schedule is parsed from a config, ``{"name": <torch class name>, **torch's arguments}`` (without
``optimizer``, ``last_epoch`` or ``verbose``), and works on a list of torch-style param-group dicts:
``start(groups)`` does what the torch scheduler's constructor does to its optimizer's groups (sets
``initial_lr`` and the lrs of step 0), ``step(groups)`` what one ``scheduler.step()`` does after the
optimizer's step, and ``last_lr`` is ``get_last_lr()``. Each lr is computed with torch's own
formula in torch's order of operations (the recursive form where torch steps with one), so the
lrs equal torch's bit for bit. ``state_dict()`` has torch's layout, keys and values: torch's
scheduler loads it, and ours loads torch's.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 0.1}, {"lr": 0.01}]
>>> schedule = parse_schedule({"name": "ExponentialLR", "gamma": 0.5})
>>> schedule.start(groups)
>>> schedule.step(groups)
>>> schedule.last_lr
[0.05, 0.005]
>>> schedule.state_dict()["last_epoch"]
1
"""

from optim_core.lr_schedules.parse import NAMES, parse_schedule
from optim_core.lr_schedules.schedule import Schedule

__all__ = ["NAMES", "Schedule", "parse_schedule"]
