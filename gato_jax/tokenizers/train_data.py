"""What a training stream hands the trainer: `TrainData`, the one type between data_pipelines and training.

It lives here, beside `TokenSequence`, below both: `data_pipelines.stream` builds it, an entry point
passes it to `gato_jax.train.loop.train_and_evaluate`, and neither package imports the other.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from gato_jax.tokenizers.sequence import TokenSequence
from gato_jax.tokenizers.spec import TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout


class ResumableIterator(Protocol):
    """Process-local numpy TokenSequence batches [batch_size / process_count, seq_len], resumable from a
    JSON-able state saved in every checkpoint."""

    def __iter__(self) -> Iterator[TokenSequence]: ...
    def __next__(self) -> TokenSequence: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class TrainData:
    """A training stream, held-out batches, and what a checkpoint must carry to be usable alone."""

    layout: VocabLayout
    train_iter: ResumableIterator
    eval_batches: Callable[[], list[TokenSequence]]  # Process-local held-out batches, same every call.
    task_specs: dict[str, TaskSpec] = dataclasses.field(default_factory=dict)  # Control tasks, by name.
    tokenizer: TextTokenizer | None = None  # SentencePiece model of text and captions; None without them.
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able: mixture, dataset dirs.
