"""Model FLOPs utilisation: the FLOPs a train step executes, and the machine's peak FLOP/s, measured and derived.

Measured: the best of square matmuls of several sizes, best over repeats (one size or a median reads
low on a shared or throttled machine). Derived (CPU only): cores x vector FLOPs per cycle x clock, from
/proc/cpuinfo. MFU divides by the higher of the two.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import ml_collections
import numpy as np

from gato_jax.model.cost import flops_per_token
from gato_jax.model.resampler import ROW_CAP_FRACTIONS
from gato_jax.model.sparse import caps_from_fractions
from gato_jax.tokenizers.sequence import Modality, TokenSequence

MATMUL_SIZES = (512, 1024, 2048, 4096)
# float32 FLOPs per cycle per core by instruction set: two FMA units x lanes x 2 (multiply and add).
# Two FMA ports is what server cores since Haswell (AVX2) and Skylake-SP (AVX-512) have; cpuinfo does
# not say how many a core has, so this is an assumption stated in `theoretical_fma_peak()["how"]`.
FLOPS_PER_CYCLE = (("avx512f", 2 * 16 * 2), ("avx2", 2 * 8 * 2), ("sse2", 2 * 4 * 2))


@functools.cache
def measure_matmul_peak(sizes: tuple[int, ...] = MATMUL_SIZES, repeats: int = 3, dtype: str = "float32") -> float:
    """Best FLOP/s of a square matmul over `sizes` and `repeats` on the default device (2 n^3 per product)."""
    best = 0.0
    for n in sizes:
        key = jax.random.key(n)
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
        matmul = jax.jit(lambda x, y: x @ y)
        matmul(a, b).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, b).block_until_ready()
            best = max(best, 2.0 * n**3 / (time.perf_counter() - start))
    return best


def _cpuinfo() -> tuple[set[str], float]:
    """(flags, highest 'cpu MHz') of /proc/cpuinfo; empty and 0 where it cannot be read."""
    flags: set[str] = set()
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags |= set(value.split())
                elif key.strip() == "cpu MHz":
                    mhz = max(mhz, float(value))
    except (OSError, ValueError):
        pass
    return flags, mhz


@functools.cache
def theoretical_fma_peak() -> dict:
    """float32 FMA peak of the CPU cores this process may use: {"flops", "how"} (flops 0 when unknown)."""
    flags, mhz = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    isa, per_cycle = next(((name, n) for name, n in FLOPS_PER_CYCLE if name in flags), ("", 0))
    fma = "fma" in flags or isa == "avx512f"  # AVX-512F implies FMA.
    lanes = per_cycle // 4
    if not fma:
        per_cycle //= 2  # A multiply and an add are separate instructions.
    flops = cores * per_cycle * mhz * 1e6
    unit = "FMA units x 2" if fma else "units (multiply, add) x 1"
    how = (f"{cores} cores x {per_cycle} float32 FLOP/cycle ({isa}{' + fma' if fma else ''}: 2 {unit} x "
           f"{lanes} lanes) x {mhz:.0f} MHz ('cpu MHz' in /proc/cpuinfo)") if flops else "unknown (no /proc/cpuinfo)"
    return {"flops": flops, "how": how}


def peak_flops() -> dict:
    """{"measured", "theoretical", "peak" (the higher), "how"}: the MFU denominator. The CPU figure is
    left out on accelerators, where the matmul measures the device."""
    measured = measure_matmul_peak()
    theory = theoretical_fma_peak() if jax.default_backend() == "cpu" else {"flops": 0.0, "how": "not a CPU"}
    return {"measured": measured, "theoretical": theory["flops"], "peak": max(measured, theory["flops"]),
            "how": theory["how"]}


def step_flops(config: ml_collections.ConfigDict, vocab_size: int, batch: TokenSequence) -> float:
    """Training FLOPs one step executes on `batch` (numpy) under `config.train`: the plain path runs the
    ResNet and the logits at every position; the sparse path at the smallest cap of positions holding the
    batch's image tokens and targets (every position when none does), the ResNet as matrix products, and a
    perceiver resampler at each row's outputs under its row cap (`_latent_fraction`)."""
    n = batch.tokens.size
    sparse = bool(config.get("train") and config.train.sparse)
    fractions = {"image_fraction": 1.0, "logits_fraction": 1.0, "patch_matmuls": sparse}
    if sparse:
        for name, caps, mask in (
                ("image_fraction", config.train.image_position_caps, np.asarray(batch.modality) == Modality.IMAGE),
                ("logits_fraction", config.train.loss_position_caps, np.asarray(batch.loss_mask)[:, 1:])):
            count = int(mask.sum())
            fractions[name] = next((c for c in caps_from_fractions(caps, n) if c >= count), n) / n
    if sparse and str(config.model.get("image_encoder", "patches")) == "resampler":
        fractions["latent_fraction"] = _latent_fraction(config, batch)
    return n * flops_per_token(config.model, config.seq_len, vocab_size, **fractions)


def _latent_fraction(config: ml_collections.ConfigDict, batch: TokenSequence) -> float:
    """Fraction of a row's positions the sparse resampler runs at: the smallest row cap holding the batch's
    fullest row of outputs (`resampler.ROW_CAP_FRACTIONS`), 1 when none does. In numpy, as the rest of the
    count: the loop calls it on every batch, and device ops here would wait behind the running step."""
    modality, segment = np.asarray(batch.modality), np.asarray(batch.segment_ids)
    # Image spans as `attention.span_ids` draws them: maximal runs of image positions of one segment.
    in_span = (modality == Modality.IMAGE) & (segment != 0)
    continues = np.pad(in_span[:, :-1] & (segment[:, :-1] == segment[:, 1:]), ((0, 0), (1, 0)))
    ids = np.where(in_span, np.cumsum(in_span & ~continues, axis=1), 0)
    k = int(config.model.resampler_tokens)
    most = max((int(np.minimum(np.bincount(row[row > 0])[1:], k).sum()) for row in ids), default=0)
    t = int(modality.shape[1])
    return next((c for c in caps_from_fractions(ROW_CAP_FRACTIONS, t) if c >= most), t) / t
