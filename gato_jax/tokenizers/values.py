"""Scalar values to token ids and back (docs/TOKEN_FORMAT.md, "Numbers").

Continuous values: optional mu-law companding, clip to [-1, 1], `layout.num_continuous_bins` uniform bins,
shifted by `layout.continuous_offset`. Discrete values: integers 0..num_discrete-1 shifted by
`layout.discrete_offset`. Tensors are flattened row-major, so one value is one token.

Everything is vectorised numpy: episodes hold thousands of steps, and a Python loop per value would
dominate data loading. Bad input raises ValueError naming `field`, so a dataset bug points at its column.
"""
from __future__ import annotations

import numpy as np

from gato_jax.tokenizers.vocab import VocabLayout

MU = 100.0  # mu-law companding strength [A].
M = 256.0  # Largest magnitude the companding maps onto [-1, 1] [A].


def mu_law_encode(x, mu: float = MU, m: float = M) -> np.ndarray:
    """F(x) = sgn(x) * log(|x| * mu + 1) / log(m * mu + 1); maps [-m, m] onto [-1, 1], float64."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.log1p(np.abs(x) * mu) / np.log1p(m * mu)


def mu_law_decode(y, mu: float = MU, m: float = M) -> np.ndarray:
    """Inverse of `mu_law_encode`: sgn(y) * ((m * mu + 1) ** |y| - 1) / mu, float64."""
    y = np.asarray(y, np.float64)
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(m * mu)) / mu


def as_finite_float(x, field: str) -> np.ndarray:
    """float64 copy of `x`; rejects non-numeric, NaN and inf values, which have no bin."""
    try:
        x = np.asarray(x, np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Field {field!r}: continuous values must be numeric ({err}).") from None
    if not np.all(np.isfinite(x)):
        bad = x[~np.isfinite(x)].ravel()[0]
        raise ValueError(f"Field {field!r}: continuous values must be finite, found {bad}; clean the data first.")
    return x


def tokenize_continuous(x, layout: VocabLayout, companded: bool = True, field: str = "value") -> np.ndarray:
    """Continuous values -> int32 ids [x.size] (row-major) in `layout.continuous_range`.

    Values outside [-1, 1] after (optional) companding are clipped: the paper's choice, and the only one
    that keeps every id in range. x = 1 falls into the last bin rather than one past it.
    """
    x = as_finite_float(x, field).ravel()
    y = mu_law_encode(x) if companded else x
    n = layout.num_continuous_bins
    bins = np.floor((np.clip(y, -1.0, 1.0) + 1.0) * (n / 2.0))
    return (np.clip(bins, 0, n - 1).astype(np.int32) + layout.continuous_offset).astype(np.int32)


def check_id_range(ids, lo: int, hi: int, what: str, field: str) -> np.ndarray:
    """int64 copy of `ids` after checking they are integers in [lo, hi)."""
    ids = np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Field {field!r}: token ids must be integers, got dtype {ids.dtype}.")
    ids = ids.astype(np.int64).ravel()
    if ids.size and (ids.min() < lo or ids.max() >= hi):
        bad = ids[(ids < lo) | (ids >= hi)][0]
        raise ValueError(f"Field {field!r}: id {bad} is not a {what} id; those lie in [{lo}, {hi}).")
    return ids


def detokenize_continuous(ids, layout: VocabLayout, companded: bool = True, field: str = "value") -> np.ndarray:
    """Continuous ids -> float32 values [ids.size] at bin centres, inverse mu-law where it was applied."""
    lo, hi = layout.continuous_range
    bins = check_id_range(ids, lo, hi, "continuous", field) - lo
    y = -1.0 + (bins + 0.5) * (2.0 / layout.num_continuous_bins)
    return (mu_law_decode(y) if companded else y).astype(np.float32)


def as_integers(x, field: str) -> np.ndarray:
    """int64 copy of `x`; floats are accepted only when they hold whole numbers (datasets store some as float)."""
    x = np.asarray(x)
    if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"Field {field!r}: discrete values must be integers, got dtype {x.dtype}.")
    if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
        bad = x[~np.isfinite(x) | (x != np.round(x))].ravel()[0]
        raise ValueError(f"Field {field!r}: discrete values must be whole numbers, found {bad}.")
    return x.astype(np.int64)


def tokenize_discrete(x, layout: VocabLayout, field: str = "value") -> np.ndarray:
    """Integer values 0..num_discrete-1 -> int32 ids [x.size] (row-major) in `layout.discrete_range`."""
    x = as_integers(x, field).ravel()
    if x.size and (x.min() < 0 or x.max() >= layout.num_discrete):
        bad = x[(x < 0) | (x >= layout.num_discrete)][0]
        raise ValueError(
            f"Field {field!r}: discrete value {bad} is outside [0, {layout.num_discrete}); "
            "remap it or enlarge VocabLayout.num_discrete."
        )
    return (x + layout.discrete_offset).astype(np.int32)


def detokenize_discrete(ids, layout: VocabLayout, field: str = "value") -> np.ndarray:
    """Discrete ids -> int32 values [ids.size]."""
    lo, hi = layout.discrete_range
    return (check_id_range(ids, lo, hi, "discrete", field) - lo).astype(np.int32)
