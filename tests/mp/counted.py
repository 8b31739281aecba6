"""A NumPy array that counts how often it is pickled in this process (for the tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

PICKLED = [0]


class CountedArray(np.ndarray):  # type: ignore[type-arg]
    def __reduce_ex__(self, protocol: Any) -> Any:
        PICKLED[0] += 1
        return super().__reduce_ex__(protocol)


def counted(megabytes: int) -> CountedArray:
    return np.ones(megabytes * 1024 * 1024 // 8).view(CountedArray)
