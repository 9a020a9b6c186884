"""The machine's matmul peak, measured, so MFU figures divide by what this machine can actually do."""
from __future__ import annotations

import functools
import time

import jax
import numpy as np


@functools.cache
def measure_matmul_peak(size: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Median FLOP/s of a square matmul on the default device (2*size^3 FLOPs per product)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    matmul = jax.jit(lambda x, y: (x @ y).sum())
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(times))
