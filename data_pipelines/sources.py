"""Per-example generators for each kind of training source: control episodes, text, captions.

Every source is a callable `source(rng) -> TokenSequence` of exactly `seq_len` positions, and a pure
function of the numpy Generator it is handed; `data_pipelines.stream` seeds that Generator from
(seed, example index), so any example can be rebuilt alone (resumption, process sharding, eval).
Sources take in-memory data (arrays, lists, random-access sequences), so they are tested on synthetic
data; `FlatEpisodes` may also be memory-mapped from its on-disk cache (written here, placed by `stream`).

Array key: S = steps over all episodes of a split, E = episodes, T = tokens, L = cached text ids.

Decisions where the paper is silent ([D], docs/TOKEN_FORMAT.md "Training"):
- Control windows start and end on timestep boundaries: a window holds floor(seq_len / tokens per
  timestep) whole timesteps and the rest is padding, so no action is cut from its observation.
  Windows are uniform over all windows of the split (episodes weighted by their number of windows).
- A prompt holds floor(seq_len / 2) tokens rounded down to whole timesteps; the episode window gets
  what is left (a prompt from a shorter episode leaves padding). A prompt carries no loss (the model
  is conditioned on it, not trained to predict it) and shares the window's segment so the window
  attends to it. A task with a single episode prompts from that same episode (there is no other
  demonstration to take).
- Text documents are `<bos>` text `<eos>` (as `tokenize_text`), packed end to end; a window may
  cross documents, each keeping its own segment id so attention stays within a document.
- Captions are packed whole, as many as fit, each its own segment; the remainder is padding.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from data_pipelines import published
from gato_jax.tokenizers import episode as episode_lib
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import NO_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.spec import TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

Source = Callable[[np.random.Generator], TokenSequence]

BOS_MARK = -1  # In cached text ids: a document's `<bos>`; mapped to the layout's id per window.
EOS_MARK = -2  # In cached text ids: a document's `<eos>`.


# ---------------------------------------------------------------------------------------------------------
# Control episodes.


@dataclasses.dataclass(frozen=True)
class FlatEpisodes:
    """All steps of a split, field by field ([S, ...] each), with episode e at steps starts[e]:starts[e+1].

    Flat arrays let a window read only the steps it needs, and can be memory-mapped from a cache.
    """

    observation: Mapping[str, np.ndarray]
    action: Mapping[str, np.ndarray]
    starts: np.ndarray  # int64 [E + 1]
    path: str | None = None  # The cache these arrays are mapped from, if any.

    def __reduce__(self):
        """Worker processes reopen the memory map rather than receive a copy of every frame."""
        if self.path is None:
            return super().__reduce__()
        return read_flat_cache, (self.path,)

    @property
    def num_episodes(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def steps(self, episode: int, lo: int, hi: int) -> dict:
        """Steps lo:hi of one episode in `tokenize_episode`'s layout."""
        a, b = self.starts[episode] + lo, self.starts[episode] + hi
        return {"observation": {k: np.asarray(v[a:b]) for k, v in self.observation.items()},
                "action": {k: np.asarray(v[a:b]) for k, v in self.action.items()}}

    @classmethod
    def from_episodes(cls, episodes: Iterable[Mapping], spec: TaskSpec) -> FlatEpisodes:
        """Concatenates in-memory episodes (each {'steps': {'observation': ..., 'action': ...}})."""
        parts = [episode_fields(ep, spec) for ep in episodes]
        if not parts:
            raise ValueError(f"Task {spec.name!r} has no episodes.")
        lengths = [len(next(iter(obs.values()))) for obs, _ in parts]
        join = lambda role: {k: np.concatenate([p[role][k] for p in parts]) for k in parts[0][role]}
        return cls(join(0), join(1), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def episode_fields(episode: Mapping, spec: TaskSpec) -> tuple[dict, dict]:
    """(observation, action) arrays of the spec's fields, checked to share one step count."""
    steps = episode["steps"]
    obs = {f.name: np.asarray(steps["observation"][f.name]) for f in spec.observation}
    act = {f.name: np.asarray(steps["action"][f.name]) for f in spec.action}
    counts = {name: len(x) for name, x in {**obs, **act}.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"Episode of {spec.name!r} has fields with different step counts: {counts}.")
    return obs, act


# ---------------------------------------------------------------------------------------------------------
# Flat episode caches on disk.

FLAT_FORMAT = 1  # Bumped when the cache layout changes, so old caches are rebuilt.


def _field_file(role: str, index: int) -> str:
    return f"{role}_{index}.npy"  # Field names may hold any character; the manifest maps them.


def write_flat_cache(path: str | os.PathLike, episodes: Iterable[Mapping], spec: TaskSpec, fingerprint: str) -> None:
    """Streams episodes into one .npy per field (constant memory), swapped in atomically."""
    with published.atomic_directory(path, replace=True) as tmp:
        roles = {"observation": [f.name for f in spec.observation], "action": [f.name for f in spec.action]}
        writers = {(r, n): _RawWriter(tmp / f"{r}_{i}.raw") for r, names in roles.items() for i, n in enumerate(names)}
        lengths = []
        for ep in episodes:
            obs, act = episode_fields(ep, spec)
            for (role, name), writer in writers.items():
                writer.append((obs if role == "observation" else act)[name])
            lengths.append(len(next(iter(act.values()))))  # Every spec has an action field.
        if not lengths:
            raise ValueError(f"Task {spec.name!r} has no episodes to cache.")
        for (role, name), writer in writers.items():
            writer.finish(tmp / _field_file(role, roles[role].index(name)))
        np.save(tmp / "starts.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        manifest = {"format": FLAT_FORMAT, "fingerprint": fingerprint, "fields": roles}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


class _RawWriter:
    """Appends same-shaped arrays to a raw file, then writes them out as one .npy."""

    def __init__(self, path: Path):
        self.path, self.rows, self.dtype, self.shape = path, 0, None, None
        path.touch()

    def append(self, x: np.ndarray) -> None:
        if self.dtype is None:
            self.dtype, self.shape = x.dtype, x.shape[1:]
        if x.dtype != self.dtype or x.shape[1:] != self.shape:
            raise ValueError(f"Episodes disagree on a field: {x.dtype}{x.shape[1:]} vs {self.dtype}{self.shape}.")
        with open(self.path, "ab") as f:
            f.write(np.ascontiguousarray(x).tobytes())
        self.rows += len(x)

    def finish(self, npy_path: Path, chunk: int = 4096) -> None:
        if self.rows:
            raw = np.memmap(self.path, self.dtype, "r", shape=(self.rows, *self.shape))
            out = np.lib.format.open_memmap(npy_path, "w+", self.dtype, (self.rows, *self.shape))
            for lo in range(0, self.rows, chunk):
                out[lo:lo + chunk] = raw[lo:lo + chunk]
            out.flush()
            del raw, out
        else:  # numpy cannot memory-map an empty file.
            np.save(npy_path, np.zeros((0, *(self.shape or ())), self.dtype or np.uint8))
        os.remove(self.path)


def read_flat_cache(path: str | os.PathLike, fingerprint: str | None = None) -> FlatEpisodes | None:
    """The memory-mapped cache, or None when it is missing, of another format or of other data."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FLAT_FORMAT or (fingerprint is not None and manifest["fingerprint"] != fingerprint):
        return None
    load = lambda role: {n: np.load(path / _field_file(role, i), mmap_mode="r")
                         for i, n in enumerate(manifest["fields"][role])}
    return FlatEpisodes(load("observation"), load("action"), np.load(path / "starts.npy"), str(path))


class ControlSource:
    """Random timestep-aligned windows of a task's episodes, some prefixed by a demonstration prompt."""

    def __init__(self, spec: TaskSpec, layout: VocabLayout, episodes: FlatEpisodes, seq_len: int, *,
                 prompt_prob: float, prompt_end_fraction: float, prompt_episodes: FlatEpisodes | None = None):
        """`prompt_episodes`: where prompts come from when not from `episodes` (a DAgger round's windows are
        prompted by expert demonstrations, as the model is prompted when it plays)."""
        step = spec.tokens_per_timestep
        if step > seq_len:
            raise ValueError(f"A timestep of {spec.name!r} has {step} tokens, more than seq_len={seq_len}; "
                             "raise config.seq_len or use larger patches.")
        if episodes.num_episodes == 0 or episodes.lengths.min() <= 0:
            raise ValueError(f"Task {spec.name!r} needs at least one episode and no empty episodes.")
        self.spec, self.layout, self.episodes, self.seq_len = spec, layout, episodes, seq_len
        self.prompt_episodes = prompt_episodes
        self.prompt_prob, self.prompt_end_fraction = prompt_prob, prompt_end_fraction
        self.window_steps = seq_len // step
        self.prompt_steps = (seq_len // 2) // step  # [D]; 0 disables prompts (seq_len < 2 timesteps).
        self.prompted_window_steps = (seq_len - self.prompt_steps * step) // step

    def __call__(self, rng: np.random.Generator) -> TokenSequence:
        prompted = self.prompt_steps > 0 and rng.random() < self.prompt_prob
        steps = self.prompted_window_steps if prompted else self.window_steps
        episode, start, stop = self.sample_window(rng, steps)
        window = self._tokens(episode, start, stop)
        if prompted:
            window = seq_lib.concat([self.prompt(rng, episode), window])
        return seq_lib.pad_to(window, self.seq_len)

    def sample_window(self, rng: np.random.Generator, steps: int) -> tuple[int, int, int]:
        """(episode, start, stop), uniform over all windows of `steps` steps (whole short episodes)."""
        counts = np.maximum(self.episodes.lengths - steps + 1, 1)
        cum = np.cumsum(counts)
        u = int(rng.integers(cum[-1]))
        episode = int(np.searchsorted(cum, u, side="right"))
        start = u - (int(cum[episode - 1]) if episode else 0)
        return episode, start, start + min(steps, int(self.episodes.lengths[episode]))

    def prompt(self, rng: np.random.Generator, episode: int) -> TokenSequence:
        """A loss-free demonstration from another episode: its end, or a uniform window of it."""
        if self.prompt_episodes is None:
            demos, other = self.episodes, self.other_episode(rng, episode)
        else:
            demos = self.prompt_episodes
            other = int(rng.integers(demos.num_episodes))
        length = int(demos.lengths[other])
        steps = min(self.prompt_steps, length)
        if rng.random() < self.prompt_end_fraction:
            start = length - steps
        else:
            start = int(rng.integers(length - steps + 1))
        tokens = self._tokenize(demos, other, start, start + steps)
        return tokens._replace(loss_mask=np.zeros_like(tokens.loss_mask))

    def other_episode(self, rng: np.random.Generator, episode: int) -> int:
        """Uniform over the other episodes; the same one when it is the task's only episode."""
        n = self.episodes.num_episodes
        if n == 1:
            return episode
        other = int(rng.integers(n - 1))
        return other + (other >= episode)

    def _tokens(self, episode: int, start: int, stop: int) -> TokenSequence:
        return self._tokenize(self.episodes, episode, start, stop)

    def _tokenize(self, episodes: FlatEpisodes, episode: int, start: int, stop: int) -> TokenSequence:
        """Steps start:stop of one episode (frame histories read the steps before `start` too)."""
        read = lambda lo, hi: episodes.steps(episode, lo, hi)
        return episode_lib.tokenize_window(self.spec, self.layout, read, start, stop)


class SourceMix:
    """Each example from one of `sources`, drawn with probabilities `weights` (normalised): a task's expert
    episodes beside its DAgger rounds (`data_pipelines.onpolicy`)."""

    def __init__(self, sources: Sequence[Source], weights: Sequence[float]):
        weights = np.asarray(weights, np.float64)
        if len(sources) != len(weights) or not len(sources) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"A source mix needs one non-negative weight per source, not all zero; got {weights}.")
        self.sources, self.cumulative = list(sources), np.cumsum(weights / weights.sum())

    def __call__(self, rng: np.random.Generator) -> TokenSequence:
        pick = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.sources) - 1)
        return self.sources[pick](rng)


# ---------------------------------------------------------------------------------------------------------
# Text.


def document_ids(tokenizer: TextTokenizer, documents: Iterable[str]) -> np.ndarray:
    """int32 [L]: each non-empty document as BOS_MARK, piece ids, EOS_MARK, end to end."""
    parts = [np.asarray([BOS_MARK, *tokenizer.encode(doc), EOS_MARK], np.int32) for doc in documents if doc]
    if not parts:
        raise ValueError("The text split has no non-empty documents.")
    return np.concatenate(parts)


class TextSource:
    """Random seq_len windows of the packed documents; loss on text and `<eos>`, one segment per document."""

    def __init__(self, ids: np.ndarray, layout: VocabLayout, seq_len: int, patch_size: int = 16):
        if ids.ndim != 1 or not len(ids):
            raise ValueError(f"Text ids must be a non-empty 1-D array, got shape {ids.shape}.")
        self.ids, self.layout, self.seq_len, self.patch_size = ids, layout, seq_len, patch_size

    def __call__(self, rng: np.random.Generator) -> TokenSequence:
        start = int(rng.integers(max(len(self.ids) - self.seq_len, 0) + 1))
        return seq_lib.pad_to(self.window(np.asarray(self.ids[start:start + self.seq_len])), self.seq_len)

    def window(self, ids_T: np.ndarray) -> TokenSequence:
        is_bos, is_eos = ids_T == BOS_MARK, ids_T == EOS_MARK
        tokens = np.where(is_bos, self.layout.special_id("<bos>"),
                          np.where(is_eos, self.layout.special_id("<eos>"), ids_T))
        # A window that starts inside a document gives that document segment 1 too.
        segments = np.cumsum(is_bos) + (0 if is_bos[0] else 1)
        return seq_lib.empty(len(ids_T), self.patch_size)._replace(
            tokens=tokens.astype(np.int32),
            modality=np.where(is_bos | is_eos, Modality.SPECIAL, Modality.TEXT).astype(np.int32),
            local_pos=np.full(len(ids_T), NO_LOCAL_POS, np.int32),
            loss_mask=~is_bos,
            segment_ids=segments.astype(np.int32))


# ---------------------------------------------------------------------------------------------------------
# Captions.


class PackedExamples:
    """`source(rng) -> TokenSequence` of seq_len: randomly drawn examples packed whole, each its own segment.

    Subclasses say how example `index` is tokenized (`tokenize`). Tokenized examples are kept (up to
    `cache_size`): a packed window draws several of them, and tokenizing dominates the cost while a split
    is small enough (a few thousand) to hold.
    """

    what = "examples"  # Named in the error for an empty split.

    def __init__(self, examples: Sequence[Mapping], tokenizer: TextTokenizer, layout: VocabLayout,
                 seq_len: int, patch_size: int = 16, cache_size: int = 20_000):
        if not len(examples):
            raise ValueError(f"The {self.what} split is empty.")
        tokenizer.check_layout(layout)
        self.examples, self.tokenizer, self.layout = examples, tokenizer, layout
        self.seq_len, self.patch_size, self.cache_size = seq_len, patch_size, cache_size
        self._cache: dict[int, TokenSequence] = {}

    def __call__(self, rng: np.random.Generator) -> TokenSequence:
        parts, used = [], 0
        while True:
            seq = self.example(int(rng.integers(len(self.examples))))
            if used + seq.length > self.seq_len:
                if not parts:  # One example longer than the window: keep its start rather than nothing.
                    parts.append(seq_lib.slice_tokens(seq, 0, self.seq_len))
                break
            parts.append(seq_lib.with_segment(seq, len(parts) + 1))
            used += seq.length
        return seq_lib.pad_to(seq_lib.concat(parts), self.seq_len)

    def example(self, index: int) -> TokenSequence:
        """Example `index` tokenized whole (segment 1), from the cache when it is there."""
        seq = self._cache.get(index)
        if seq is None:
            seq = self.tokenize(index)
            if len(self._cache) < self.cache_size:
                self._cache[index] = seq
        return seq

    def tokenize(self, index: int) -> TokenSequence:
        raise NotImplementedError


class CaptionSource(PackedExamples):
    """Captioned images packed whole, as `tokenize_caption` lays each out."""

    what = "captions"

    def tokenize(self, index: int) -> TokenSequence:
        example = self.examples[index]
        return episode_lib.tokenize_caption(self.tokenizer, self.layout, example["image"], example["caption"],
                                            self.patch_size)


# ---------------------------------------------------------------------------------------------------------
# Held-out windows for evaluation, cut exactly as the training stream cuts them.


def control_windows(spec: TaskSpec, layout: VocabLayout, episodes: Sequence[Mapping], seq_len: int,
                    count: int) -> list[TokenSequence]:
    """`count` random windows (seeded, no prompts) of the episodes, as `ControlSource` cuts training windows."""
    flat = FlatEpisodes.from_episodes(episodes, spec)
    source = ControlSource(spec, layout, flat, seq_len, prompt_prob=0.0, prompt_end_fraction=0.0)
    rng = np.random.default_rng(0)
    return [source(rng) for _ in range(count)]


def text_windows(tokenizer: TextTokenizer, layout: VocabLayout, documents: Sequence[str], seq_len: int,
                 patch_size: int, count: int) -> list[TokenSequence]:
    """The first `count` consecutive seq_len windows of the documents, packed as in training."""
    ids = document_ids(tokenizer, documents)
    source = TextSource(ids, layout, seq_len, patch_size)
    count = min(count, max(1, -(-len(ids) // seq_len)))
    return [seq_lib.pad_to(source.window(np.asarray(ids[i * seq_len:(i + 1) * seq_len])), seq_len)
            for i in range(count)]
