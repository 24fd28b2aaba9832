"""torch's step counter, for the algorithms whose numbers depend on it (Adam's bias corrections, Adagrad's decay).

torch keeps ``step`` as a float32 scalar tensor and adds one to it, so that past 2**24 it stops growing (a float32
holds no odd integer above 2**24) and ``step + 1`` rounds back to ``2**24``; the numbers it computes from the step
use that value. Counting in a Python int would part from torch there.
"""

import numpy as np

FLOAT32_ONE = np.float32(1)


def next_step(step: int) -> int:
    """The step after ``step`` as torch's float32 counter holds it."""
    return int(np.float32(step) + FLOAT32_ONE)
