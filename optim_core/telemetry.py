"""What a step measures while it runs: the norms of the gradient, the update and the params, and the spread
of a per-element quantity of the algorithm (Rprop's step sizes, RMSprop's effective learning rates).

The kernels call a ``StepMeasure`` on each cache-sized block (``chunks.py``) as they update it, so the data
is read while it is in cache: ``before`` the block changes, ``after`` it has. Sums of squares are taken in
float64, by BLAS dot products of float64 copies: a float32 square is exact in float64, so the norms equal a
float64 numpy computation to within rounding of the sum itself (about 1e-15 relative).

The dot products are BLAS's. OpenBLAS splits a dot product of a block over every core, and waking its
threads for each block costs several times the work: limit BLAS to one thread (``threadpoolctl``, or
``OPENBLAS_NUM_THREADS=1``) where measured steps run, as the service does.

The median of a spread is exact up to ``SAMPLE_LIMIT`` elements. Beyond that it is the median of an evenly
strided sample of at most that many elements (every k-th element over the params in order): an exact
median needs every value at once, which costs more than the step.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from optim_core.chunks import CHUNK_ELEMENTS

SAMPLE_LIMIT = 1 << 14
"""Spreads over at most this many elements have an exact median; larger ones, that of a strided sample."""


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "median": self.median, "max": self.max}


@dataclass(frozen=True)
class StepTelemetry:
    """One step's measures, over the params it stepped. Names are the service's contract (docs/api.md)."""

    grad_norm: float
    """The L2 norm of the gradients as received, over all stepped params together (as
    ``torch.nn.utils.clip_grad_norm_`` computes its total norm)."""
    update_norm: float
    """The L2 norm of the change in the params: after minus before, as stored."""
    param_norm: float
    """The L2 norm of the stepped params after the step."""
    lr: list[float]
    """Each param group's learning rate."""
    extra: dict[str, object] = field(default_factory=dict)
    """The algorithm's own measures (each algorithm module documents its own)."""


class StepMeasure:
    """The running sums of one step, fed block by block by a kernel.

    Per block a kernel calls ``before(param, grad)`` before it writes the block, then any of ``spread`` and
    ``changed_signs``, then ``after(param)``. Blocks of all params of a step go through one measure, in order.
    """

    def __init__(self, total_elements: int) -> None:
        self.grad_squares = 0.0
        self.update_squares = 0.0
        self.param_squares = 0.0
        self.elements = 0
        self.sign_changes = 0
        self.spread_min = math.inf
        self.spread_max = -math.inf
        self._stride = max(1, -(-total_elements // SAMPLE_LIMIT))
        self._samples: list[np.ndarray] = []
        self._size = min(max(total_elements, 1), CHUNK_ELEMENTS)
        self._before: np.ndarray | None = None
        """The block's params before the update, in their own dtype (a float64 copy would crowd the cache)."""
        self._wide = np.empty(self._size)
        """A block in float64: a float32 one cast, or a difference."""
        self._block_start = 0

    def _squares(self, block: np.ndarray) -> float:
        """The sum of the block's squares, in float64."""
        if block.dtype != np.float64:
            wide = self._wide[: block.size]
            np.copyto(wide, block)
            block = wide
        return float(np.dot(block, block))

    def before(self, param: np.ndarray, grad: np.ndarray) -> None:
        """The block of ``param`` about to be updated with ``grad`` (both flat, unchanged yet)."""
        self.grad_squares += self._squares(grad)
        if self._before is None or self._before.dtype != param.dtype:
            self._before = np.empty(self._size, dtype=param.dtype)
        np.copyto(self._before[: param.size], param)
        self._block_start = self.elements
        self.elements += param.size

    def after(self, param: np.ndarray) -> None:
        """The same block, updated."""
        assert self._before is not None, "after() follows before()"
        self.param_squares += self._squares(param)
        # In float64, the difference of two float32 values is exact.
        change = self._wide[: param.size]
        np.subtract(param, self._before[: param.size], out=change, dtype=np.float64)
        self.update_squares += float(np.dot(change, change))

    def spread(self, values: np.ndarray, *, numerator: float | None = None) -> None:
        """Take in the block's per-element ``values``, or ``numerator / values`` when given (all positive).
        Called by the kernels, under their ``np.errstate``: a zero denominator gives inf (NaN for 0 / 0)."""
        if self._stride == 1:
            # Every value is in the sample: its min and max come out of the median's partition.
            sample = values.astype(np.float64)
            if numerator is not None:
                np.divide(numerator, sample, out=sample)
            self._samples.append(sample)
            return
        first = (-self._block_start) % self._stride
        sample = values[first :: self._stride].astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if numerator is not None:
            np.divide(numerator, sample, out=sample)
            low, high = _divided(numerator, high), _divided(numerator, low)
        self.spread_min = min(self.spread_min, low)
        self.spread_max = max(self.spread_max, high)
        self._samples.append(sample)

    def changed_signs(self, changed: np.ndarray) -> None:
        """Take in the block's mask of elements whose gradient changed sign."""
        self.sign_changes += int(np.count_nonzero(changed))

    def spread_summary(self) -> Spread | None:
        """The spread's min, median and max; None when no block reported one."""
        if not self._samples:
            return None
        sample = self._samples[0] if len(self._samples) == 1 else np.concatenate(self._samples)
        if self._stride == 1:
            median = _median(sample, with_ends=True)
            return Spread(min=float(sample[0]), median=median, max=float(sample[-1]))
        return Spread(min=self.spread_min, median=_median(sample), max=self.spread_max)

    def sign_change_fraction(self) -> float:
        return self.sign_changes / self.elements if self.elements else 0.0

    def telemetry(self, lr: list[float], extra: dict[str, object]) -> StepTelemetry:
        return StepTelemetry(
            grad_norm=math.sqrt(self.grad_squares),
            update_norm=math.sqrt(self.update_squares),
            param_norm=math.sqrt(self.param_squares),
            lr=lr,
            extra=extra,
        )


def _median(values: np.ndarray, *, with_ends: bool = False) -> float:
    """``np.median`` of a float64 array it reorders, without its checks and dispatch (a third of a small
    measured step); the mean of the two middle values, as numpy takes it, for an even count. With
    ``with_ends``, the smallest and the largest value also end up first and last."""
    size = values.size
    half = size // 2
    middle = (half,) if size % 2 else (half - 1, half)
    values.partition(sorted({0, *middle, size - 1}) if with_ends else middle)
    if size % 2:
        return float(values[half])
    return float((values[half - 1] + values[half]) / 2)


def _divided(numerator: float, denominator: float) -> float:
    """IEEE division, as numpy's: inf for a zero denominator, NaN for 0 / 0."""
    return float(np.float64(numerator) / np.float64(denominator))
