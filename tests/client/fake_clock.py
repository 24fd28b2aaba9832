"""A clock for retry policies that moves only when the policy sleeps on it: budgets without waiting."""


class FakeClock:
    """A clock that moves only when something sleeps on it, recording each sleep."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
