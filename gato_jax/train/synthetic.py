"""A synthetic training source for tests and benchmarks: the `TrainData` a real stream would hand over.

Like the real stream (`data_pipelines.stream`) it yields process-local numpy TokenSequence batches
[batch_size / process_count, seq_len] and resumes from `get_state()` / `set_state()`.
"""
from __future__ import annotations

import numpy as np

from gato_jax.configs import train_seed
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.train_data import TrainData
from gato_jax.tokenizers.vocab import VocabLayout


class SyntheticIterator:
    """A learnable control-like task: observe a discrete value v, act (v + 1) mod num_values.

    Each timestep is [observation token, separator, action token], as the Gato layout lays out a
    one-field discrete task; the action carries the loss. Batches are a pure function of (seed,
    step), and each process slices its rows out of the same global batch, so any process count sees
    the same global data.
    """

    def __init__(self, layout: VocabLayout, global_batch: int, seq_len: int, *, seed: int = 0,
                 num_values: int = 4, patch_size: int = 16, process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"batch_size={global_batch} must divide by the process count {process_count}.")
        self.layout, self.global_batch, self.seq_len = layout, global_batch, seq_len
        self.seed, self.num_values, self.patch_size = seed, num_values, patch_size
        self.rows = slice(process_index * global_batch // process_count,
                          (process_index + 1) * global_batch // process_count)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> TokenSequence:
        batch = self.global_batch_at(self.index)
        self.index += 1
        return TokenSequence(*(field[self.rows] for field in batch))

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])

    def global_batch_at(self, index: int) -> TokenSequence:
        rng = np.random.default_rng([self.seed, index])
        steps = -(-self.seq_len // 3)
        obs = rng.integers(0, self.num_values, size=(self.global_batch, steps))
        act = (obs + 1) % self.num_values
        return seq_lib.stack([self._sequence(o, a) for o, a in zip(obs, act)])

    def _sequence(self, obs: np.ndarray, act: np.ndarray) -> TokenSequence:
        n, off = len(obs), self.layout.discrete_offset
        tokens = np.stack([obs + off, np.full(n, self.layout.separator_id), act + off], 1).reshape(-1)
        modality = np.tile([Modality.DISCRETE, Modality.SEPARATOR, Modality.DISCRETE], n)
        local_pos = np.tile([0, seq_lib.NO_LOCAL_POS, seq_lib.ACTION_LOCAL_POS], n)
        loss_mask = np.tile([False, False, True], n)
        seq = seq_lib.empty(3 * n, self.patch_size)._replace(
            tokens=tokens.astype(np.int32), modality=modality.astype(np.int32),
            local_pos=local_pos.astype(np.int32), loss_mask=loss_mask,
            segment_ids=np.ones(3 * n, np.int32))
        return seq_lib.slice_tokens(seq, 0, self.seq_len)


def synthetic_data(config, layout: VocabLayout, process_index: int = 0, process_count: int = 1) -> TrainData:
    """TrainData over SyntheticIterator, with held-out batches drawn from a different seed."""
    make = lambda seed: SyntheticIterator(layout, config.batch_size, config.seq_len, seed=seed,
                                          patch_size=config.model.patch_size,
                                          process_index=process_index, process_count=process_count)
    held_out = make(config.seed + 10_000)
    local = lambda batch: TokenSequence(*(field[held_out.rows] for field in batch))
    return TrainData(layout=layout, train_iter=make(train_seed(config)),
                     eval_batches=lambda: [local(held_out.global_batch_at(i)) for i in range(config.eval_batches)],
                     info={"source": "synthetic"})
