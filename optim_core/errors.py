"""The errors the numeric core raises: every rejection is an ``OptimCoreError``."""

Loc = tuple[str | int, ...]


class OptimCoreError(ValueError):
    """A rejected call. Nothing was changed by it.

    ``loc`` is the path of the offending field, e.g. ``("grads", "w")`` or
    ``("param_groups", 0, "lr")``, so that callers can point at it.
    """

    def __init__(self, message: str, *, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


class InvalidHyperparameterError(OptimCoreError):
    """A hyperparameter is out of range, non-finite, of the wrong type or unknown."""


class InvalidParameterError(OptimCoreError):
    """The parameters given to an optimizer are empty, duplicated or not float arrays."""


class InvalidGradientError(OptimCoreError):
    """A gradient names an unknown parameter, has the wrong shape or dtype, or is not finite."""


class InvalidStateDictError(OptimCoreError):
    """A state_dict does not fit the optimizer or learning-rate schedule it is loaded into."""


class ScheduleStepError(OptimCoreError):
    """A learning-rate schedule cannot do this now: it has neither been started nor loaded a state
    (so it cannot step, nor tell its lrs or state), it has been started already, it has run its
    course (OneCycleLR after ``total_steps`` steps), or the step would leave a learning rate or
    momentum that is not finite."""
