"""The training stream: mixed sources -> grain -> process-local TokenSequence batches that resume exactly.

Every example is a pure function of (seed, global example index): grain's `MapDataset.mix` maps the
global index to (source, index within source) by the mixture weights (a fixed interleaving, so every
stretch of the stream holds each source in proportion), and that source builds the example from
`np.random.default_rng([seed, stream, crc32(source name), index within source])`. Examples are batched
into local batches of batch_size // process_count rows, and process p takes local batches
p, p + P, p + 2P, ...: global step s is local batches s*P .. s*P + P-1, i.e. global rows s*B .. s*B + B-1
in process order, so any process count sees the same global batches. The iterator state is grain's
(the next local-batch index = the global step), so it also survives a change of process count.
Batches are built in one background thread (more threads only contend for the GIL), or in
config.data.num_workers grain worker processes, which scale with host cores.

On disk (inside each dataset's keyed dir `prepare.Dataset.dir`, rebuilt when their source changes,
written whole or not at all):
  <task>-<key>/<task>/flat_<split>/  each spec field over all steps as one .npy, plus episode offsets;
                                     memory-mapped, so a window reads only its own timesteps.
  text-<key>/text/ids_<split>_<model hash>.npy  the split's documents as ids, tokenized once.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import grain
import ml_collections
import numpy as np

from data_pipelines import captions, corpus, documents, episodes, onpolicy, prepare, tasks
from data_pipelines import sources as sources_lib
from data_pipelines.sources import FlatEpisodes, Source
from gato_jax.configs import train_seed
from gato_jax.errors import DataError, UsageError
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.train_data import TrainData
from gato_jax.tokenizers.vocab import VocabLayout

ENDLESS = 2**62  # Examples per source: never reached, so the stream never ends.
TRAIN_STREAM, EVAL_STREAM = 0, 1  # Seed components that keep training and held-out draws apart.
READ_THREADS = 1  # Threads building batches ahead of the trainer; more only contend for the GIL.
PREFETCH_BATCHES = 4  # Batches built ahead; bounds host memory (a 512x1024 Atari batch is ~0.4 GB).
MAKE_DATA = episodes.MAKE_DATA


# ---------------------------------------------------------------------------------------------------------
# Mixing, sharding, batching.


def normalized_mixture(mixture: Mapping[str, float]) -> dict[str, float]:
    """Weights summing to 1, sorted by name (a stable order for seeding); zero weights dropped."""
    weights = {name: float(w) for name, w in sorted(dict(mixture).items())}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"config.data.mixture needs non-negative weights with a positive sum, got {weights}.")
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items() if w > 0}


@dataclasses.dataclass(frozen=True)
class _Example:
    """index -> one example of one source; a class (not a lambda) so grain can name and pickle it."""

    source: Source
    seed: int
    stream: int
    name: str

    def __call__(self, index: int) -> TokenSequence:
        key = [self.seed, self.stream, zlib.crc32(self.name.encode()), int(index)]
        return self.source(np.random.default_rng(key))


def example_dataset(sources: Mapping[str, Source], weights: Mapping[str, float], seed: int,
                    stream: int = TRAIN_STREAM) -> grain.MapDataset:
    """The endless global example stream: sources interleaved in proportion to their weights."""
    names = sorted(weights)
    parts = [grain.MapDataset.range(ENDLESS).map(_Example(sources[n], seed, stream, n)) for n in names]
    if len(parts) == 1:
        return parts[0]
    return grain.MapDataset.mix(parts, [weights[n] for n in names])


def local_batches(examples: grain.MapDataset, global_batch: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
    """This process's rows of every global batch, as stacked TokenSequences [global_batch / P, T]."""
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} must divide by the process count {process_count}.")
    local = global_batch // process_count
    return examples.batch(local, batch_fn=seq_lib.stack)[process_index::process_count]


class StreamIterator:
    """grain's iterator over local batches, with its state checked to be JSON-able for checkpoints.

    With `num_workers` > 0, grain's worker processes build batches (`mp_prefetch`); the order is the
    same, but the state then records per-worker positions, so a run resumes with the same num_workers.
    """

    def __init__(self, batches: grain.MapDataset, num_workers: int = 0, read_threads: int | None = None,
                 prefetch: int | None = None):
        options = grain.ReadOptions(num_threads=read_threads or READ_THREADS,
                                    prefetch_buffer_size=prefetch or PREFETCH_BATCHES)
        dataset = batches.to_iter_dataset(options)
        if num_workers > 0:
            _allow_grain_workers()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                                       per_worker_buffer_size=2))
        self._it = iter(dataset)

    def __iter__(self) -> StreamIterator:
        return self

    def __next__(self) -> TokenSequence:
        return next(self._it)

    def get_state(self) -> dict:
        state = self._it.get_state()
        json.dumps(state)  # Fails here, not inside the checkpointer, if grain ever stores non-JSON.
        return dict(state)

    def set_state(self, state: Mapping) -> None:
        if not state:
            raise ValueError("The checkpoint holds no data-iterator state, so the data order cannot resume.")
        try:
            self._it.set_state(dict(state))
        except KeyError as e:
            raise ValueError(f"Data-iterator state {dict(state)} is of another layout ({e} missing): resume "
                             "with the config.data.num_workers the checkpoint was written with.") from e

    def close(self) -> None:
        """Stops worker processes now rather than at garbage collection."""
        getattr(self._it, "close", lambda: None)()


def _allow_grain_workers() -> None:
    """grain's workers read absl flags; outside `app.run` (tests, notebooks) none were parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ---------------------------------------------------------------------------------------------------------
# Assembling TrainData from in-memory sources.


@dataclasses.dataclass
class StreamSettings:
    """Everything besides the sources that fixes the batches: from the config, or set in tests."""

    seq_len: int
    batch_size: int  # Global rows per step.
    seed: int  # The training stream's order (configs.train_seed).
    eval_batches: int
    process_index: int = 0
    process_count: int = 1
    num_workers: int = 0  # grain worker processes; 0 builds batches in a thread of this process.
    eval_seed: int | None = None  # The held-out batches (config.seed: the same for replicates); None: `seed`.

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, process_index: int = 0,
                    process_count: int = 1) -> StreamSettings:
        return cls(config.seq_len, config.batch_size, train_seed(config), config.eval_batches, process_index,
                   process_count, config.data.num_workers, eval_seed=int(config.seed))


def make_train_data(layout: VocabLayout, train: Mapping[str, Source], test: Mapping[str, Source],
                    weights: Mapping[str, float], settings: StreamSettings, *,
                    task_specs: Mapping[str, TaskSpec] | None = None, tokenizer: TextTokenizer | None = None,
                    info: dict | None = None) -> TrainData:
    """TrainData over ready sources: the resumable training stream and fixed held-out batches."""
    s = settings
    shard = lambda examples: local_batches(examples, s.batch_size, s.process_index, s.process_count)
    train_batches = shard(example_dataset(train, weights, s.seed, TRAIN_STREAM))
    eval_batches = shard(example_dataset(test, weights, s.seed if s.eval_seed is None else s.eval_seed, EVAL_STREAM))
    held_out: list[TokenSequence] = []

    def eval_fn() -> list[TokenSequence]:  # Built on first use, then the same list every call.
        if not held_out:
            held_out.extend(eval_batches[i] for i in range(s.eval_batches))
        return list(held_out)

    return TrainData(layout=layout, train_iter=StreamIterator(train_batches, s.num_workers), eval_batches=eval_fn,
                     task_specs=dict(task_specs or {}), tokenizer=tokenizer, info=dict(info or {}))


# ---------------------------------------------------------------------------------------------------------
# Caches.


def flat_cache_dir(data_dir: str | os.PathLike, task: str, split: str) -> Path:
    return Path(data_dir) / task / f"flat_{split}"


def cached_flat_episodes(path: str | os.PathLike, spec: TaskSpec, fingerprint: str,
                         load_episodes: Callable[[], Iterable[Mapping]]) -> FlatEpisodes:
    """Reads the cache at `path`, building it first from `load_episodes()` when missing or stale."""
    flat = sources_lib.read_flat_cache(path, fingerprint)
    if flat is None:
        sources_lib.write_flat_cache(path, load_episodes(), spec, fingerprint)
        flat = sources_lib.read_flat_cache(path, fingerprint)
    return flat


def cached_text_ids(text_dir: str | os.PathLike, split: str, tokenizer: TextTokenizer,
                    documents: Callable[[], Iterable[str]]) -> np.ndarray:
    """The split tokenized once (`sources.document_ids`), keyed by the tokenizer's hash; memory-mapped."""
    digest = hashlib.sha1(tokenizer.model_proto_bytes()).hexdigest()[:12]
    path = Path(text_dir) / f"ids_{split}_{digest}.npy"
    if not path.exists():
        ids = sources_lib.document_ids(tokenizer, documents())
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------------------
# Wiring in the prepared datasets.


def missing(what: str, where: str | os.PathLike) -> DataError:
    return DataError(f"No {what} at {where}; build it with `{MAKE_DATA}` (<name> = this experiment).")


def load_text_tokenizer(config: ml_collections.ConfigDict, root: str | os.PathLike) -> TextTokenizer:
    """The prepared SentencePiece model (below the text dataset's dir), checked to fill exactly
    config.vocab.text_size ids."""
    path = corpus.text_paths(root, config.data.text_vocab_size)["model"]
    if not path.exists():
        raise missing(f"{config.data.text_vocab_size}-piece SentencePiece model", path)
    tokenizer = TextTokenizer(path)
    if tokenizer.vocab_size != config.vocab.text_size:
        raise ValueError(f"{path} has {tokenizer.vocab_size} pieces but config.vocab.text_size is "
                         f"{config.vocab.text_size}; set config.vocab.text_size = {tokenizer.vocab_size}.")
    return tokenizer


def check_task_spec(name: str, spec: TaskSpec, stored: str | Mapping | TaskSpec | None, where: str) -> None:
    """Refuses a dataset recorded with other fields or shapes (e.g. frame size) before training starts.

    The patch size is not compared: it is how this pipeline cuts frames, not a property of the
    stored frames, so one dataset serves any patch size that divides its frames.
    """
    if stored is None:
        return
    if not isinstance(stored, TaskSpec):
        stored = TaskSpec.from_json(stored if isinstance(stored, str) else json.dumps(stored))
    differences = spec_differences(stored, spec)
    if differences:
        raise ValueError(
            f"Dataset {name!r} at {where} does not match this experiment's task spec: "
            f"{'; '.join(differences)}. Run `{MAKE_DATA}` to rebuild it, or change the config back "
            "(config.data.frame_size).")


def spec_differences(stored: TaskSpec, expected: TaskSpec) -> list[str]:
    """Readable per-field differences ('stored ... , expected ...'), patch size aside."""
    out = []
    for role in ("observation", "action"):
        have = {f.name: f for f in getattr(stored, role)}
        want = {f.name: f for f in getattr(expected, role)}
        for field in sorted(set(have) | set(want)):
            a, b = have.get(field), want.get(field)
            if a != b:
                out.append(f"{role} field {field!r} is {_describe(a)} in the dataset, {_describe(b)} expected")
    return out


def _describe(field: FieldSpec | None) -> str:
    if field is None:
        return "absent"
    extra = {FieldKind.DISCRETE: f" num_values={field.num_values}",
             FieldKind.CONTINUOUS: f" companded={field.companded} scale={field.scale}"}.get(field.kind, "")
    return f"{field.kind.value} {field.shape}{extra}"


def _stored_spec(metadata: Mapping):
    for key in ("task_spec", "spec"):
        if metadata.get(key) is not None:
            return metadata[key]
    return None


def _fingerprint(spec: TaskSpec, metadata: Mapping) -> str:
    """Names the data a flat cache was made from: a changed dataset or spec rebuilds the cache."""
    blob = json.dumps({"spec": spec.to_json(), "metadata": metadata}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def _control_sources(config, dirs: Mapping[str, Path], layout: VocabLayout,
                     onpolicy_roots: Sequence[Path] = ()) -> tuple[dict, dict, dict]:
    """(train sources, test sources, TaskSpec by task), the expert datasets' specs checked before any cache
    is built (a round's spec is checked before its own cache).

    A task with DAgger rounds in `onpolicy_roots` trains on `config.dagger.share` of its windows from them
    (`with_onpolicy`); its held-out windows stay the expert's test split."""
    specs, metas = {}, {}
    for name in prepare.control_tasks(config):
        specs[name] = tasks.task_spec_for(config, name)
        root = dirs[name]
        where = Path(root) / name
        try:
            metas[name] = dict(episodes.load_metadata(root, name))
        except FileNotFoundError as e:
            raise missing(f"dataset for task {name!r}", where) from e
        check_task_spec(name, specs[name], _stored_spec(metas[name]), str(where))
    make = lambda name, split: sources_lib.ControlSource(
        specs[name], layout, _task_episodes(dirs[name], name, split, specs[name], metas[name]), config.seq_len,
        prompt_prob=config.data.prompt_prob, prompt_end_fraction=config.data.prompt_end_fraction)
    train = {n: make(n, "train") for n in specs}
    for name, source in train.items():
        train[name] = with_onpolicy(config, source, onpolicy_roots, layout)
    return train, {n: make(n, _held_out_split(n, metas[n])) for n in specs}, specs


def with_onpolicy(config, expert: sources_lib.ControlSource, roots: Sequence[Path],
                  layout: VocabLayout) -> Source:
    """`expert` alone, or mixed with the task's DAgger rounds found in `roots` (`data_pipelines.onpolicy`):
    `config.dagger.share` of the windows come from the rounds, pooled (each weighted by its steps, as one
    aggregated dataset), prompted by the expert's training episodes as the model is prompted when it plays."""
    spec = expert.spec
    found = [Path(r) for r in roots if onpolicy.has_round(r, spec.name)]
    if not found:
        return expert
    rounds = []
    for root in found:
        metadata = episodes.load_metadata(root, spec.name)
        check_task_spec(spec.name, spec, _stored_spec(metadata), str(root / spec.name))
        flat = _task_episodes(root, spec.name, "train", spec, metadata)
        rounds.append(sources_lib.ControlSource(
            spec, layout, flat, config.seq_len, prompt_prob=config.data.prompt_prob,
            prompt_end_fraction=config.data.prompt_end_fraction, prompt_episodes=expert.episodes))
    share = float(config.dagger.share)
    steps = np.array([r.episodes.starts[-1] for r in rounds], np.float64)
    return sources_lib.SourceMix([expert, *rounds], [1.0 - share, *(share * steps / steps.sum())])


def _held_out_split(name: str, metadata: Mapping) -> str:
    """'test', or 'train' (with a warning) when filtering left a task too few episodes for a test split."""
    if metadata.get("splits", {}).get("test", 1) > 0:
        return "test"
    warnings.warn(f"Task {name!r} has no test episodes; its held-out batches reuse training episodes.",
                  stacklevel=3)
    return "train"


def _task_episodes(root: str | os.PathLike, name: str, split: str, spec: TaskSpec,
                   metadata: Mapping) -> FlatEpisodes:
    def load():
        try:
            return episodes.load_episodes(root, name, split=split)
        except FileNotFoundError as e:
            raise missing(f"{split} split of task {name!r}", Path(root) / name) from e

    return cached_flat_episodes(flat_cache_dir(root, name, split), spec, _fingerprint(spec, metadata), load)


def _text_sources(config, root: str | os.PathLike, layout: VocabLayout,
                  tokenizer: TextTokenizer) -> tuple[dict, dict]:
    def make(split: str) -> Source:
        documents = lambda: corpus.load_text_split(root, split)
        try:
            ids = cached_text_ids(Path(root) / "text", split, tokenizer, documents)
        except FileNotFoundError as e:
            raise missing(f"{split} text corpus", Path(root) / "text") from e
        return sources_lib.TextSource(ids, layout, config.seq_len, config.model.patch_size)

    names = [n for n in prepare.TEXT_SOURCES if n in config.data.mixture]
    return {n: make("train") for n in names}, {n: make("test") for n in names}


def _caption_sources(config, root: str | os.PathLike, layout: VocabLayout,
                     tokenizer: TextTokenizer) -> tuple[dict, dict]:
    def make(split: str) -> Source:
        try:
            examples = captions.load_captions(root, split)
        except FileNotFoundError as e:
            raise missing("captions dataset", captions.captions_path(root)) from e
        return sources_lib.CaptionSource(examples, tokenizer, layout, config.seq_len, config.model.patch_size)

    names = [n for n in prepare.CAPTION_SOURCES if n in config.data.mixture]
    return {n: make("train") for n in names}, {n: make("test") for n in names}


def _document_sources(config, root: str | os.PathLike | None, layout: VocabLayout,
                      tokenizer: TextTokenizer) -> tuple[dict, dict]:
    kinds = [k for k in prepare.DOCUMENT_SOURCES if k in config.data.mixture]
    if not kinds:
        return {}, {}
    try:
        return documents.training_sources(root, kinds, tokenizer, layout, config.seq_len, config.model.patch_size,
                                          label_loss=bool(config.data.fewshot_label_loss),
                                          fresh_fewshot_shots=int(config.data.fewshot_train_max_shots),
                                          one_difference=float(config.data.fewshot_train_one_difference),
                                          identical=float(config.data.fewshot_train_identical),
                                          text_keys=float(config.data.get("fewshot_train_text", 0.0)))
    except FileNotFoundError as e:
        raise missing("documents dataset", documents.documents_path(root)) from e


class ImagesDropped:
    """A source's examples with every image position deleted (then re-padded): the text a PrismerGato's
    decoder sees, for a text-only run that warm-starts it (`config.data.drop_images`)."""

    def __init__(self, source: Source, seq_len: int):
        self.source, self.seq_len = source, seq_len

    def __call__(self, rng: np.random.Generator) -> TokenSequence:
        seq = self.source(rng)
        keep = np.flatnonzero(seq.modality != Modality.IMAGE)
        return seq_lib.pad_to(TokenSequence(*(field[keep] for field in seq)), self.seq_len)


def curriculum_config(config: ml_collections.ConfigDict, step: int) -> ml_collections.ConfigDict:
    """The config whose data training from `step` draws: from `data.fewshot_late_step` on (when > 0), the
    fresh few-shot episodes' text and identical shares are the late ones; otherwise `config` itself.

    Only the shares change, not the stream's order: episode i keeps its index, demonstrations and draws
    (`documents.FreshEpisodes`), so the late stage reshows as ordinary image episodes the ones whose draws
    fall between the two shares, and a run resumed in either stage reads the batches it would have read."""
    late = int(config.data.get("fewshot_late_step", 0))
    if late <= 0 or step < late:
        return config
    staged = copy.deepcopy(config)
    staged.data.fewshot_train_text = float(config.data.fewshot_late_text)
    staged.data.fewshot_train_identical = float(config.data.fewshot_late_identical)
    return staged


CURRICULUM_FIELDS = ("fewshot_late_step", "fewshot_late_text", "fewshot_late_identical")


def check_resumed_curriculum(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             where: str) -> None:
    """UsageError when the checkpoint in `where` was trained with another late stage than `config` gives
    (absent fields: none): resuming would silently change the data the rest of the run draws."""
    for field in CURRICULUM_FIELDS:
        had, wanted = saved.get("data", {}).get(field, 0), config.data.get(field, 0)
        if float(had) != float(wanted):
            raise UsageError(f"The checkpoint in {where} was trained with config.data.{field}={had}, this run asks "
                             f"for {wanted}; pass --config.data.{field}={had} to resume it, or a fresh --workdir.")


def next_curriculum_stop(config: ml_collections.ConfigDict, step: int) -> int:
    """Where training from `step` must pause to rebuild its data: the late stage's first step, else the end."""
    late = int(config.data.get("fewshot_late_step", 0))
    return late if 0 < late and step < late else int(config.num_train_steps)


def build_train_data(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1,
                     dirs: Mapping[str, str | os.PathLike] | None = None,
                     onpolicy_roots: Sequence[str | os.PathLike] = ()) -> TrainData:
    """The experiment's mixture from its prepared datasets (`prepare.check_prepared`, or `dirs` by name), as
    the trainer consumes it; with the DAgger rounds in `onpolicy_roots` mixed into their tasks."""
    dirs = {k: Path(v) for k, v in (dirs or prepare.check_prepared(config)).items()}
    layout = VocabLayout.from_config(config)
    weights = normalized_mixture(config.data.mixture)
    tokenizer = load_text_tokenizer(config, dirs["text"]) if prepare.needs_text_tokenizer(config) else None
    roots = [Path(r) for r in onpolicy_roots]
    train, test, specs = _control_sources(config, dirs, layout, roots)
    if tokenizer is not None:
        for extra_train, extra_test in (_text_sources(config, dirs["text"], layout, tokenizer),
                                        _caption_sources(config, dirs.get("captions"), layout, tokenizer),
                                        _document_sources(config, dirs.get("documents"), layout, tokenizer)):
            train.update(extra_train)
            test.update(extra_test)
    if config.data.get("drop_images", False):
        train, test = ({k: ImagesDropped(v, config.seq_len) for k, v in d.items()} for d in (train, test))
    unknown = sorted(set(weights) - set(train))
    if unknown:
        raise ValueError(f"config.data.mixture names sources with no data: {unknown}.")
    info = {"mixture": weights, "dataset_dirs": {k: str(v) for k, v in dirs.items()}}
    if roots:
        info["onpolicy_rounds"] = [str(r) for r in roots]
    settings = StreamSettings.from_config(config, process_index, process_count)
    return make_train_data(layout, train, test, weights, settings, task_specs=specs, tokenizer=tokenizer, info=info)


# ---------------------------------------------------------------------------------------------------------
# Throughput.


def iterator_throughput(iterator, seconds: float = 5.0) -> float:
    """Tokens (batch rows x seq_len, padding included) per second, after one warm-up batch."""
    first = next(iterator)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += next(iterator).tokens.size
    return tokens / (time.perf_counter() - start) if tokens else first.tokens.size / seconds


def measure_stream_throughput(config: ml_collections.ConfigDict, seconds: float = 5,
                              dirs: Mapping[str, str | os.PathLike] | None = None) -> float:
    """Tokens per second the real pipeline delivers to one process (for `make bench`)."""
    iterator = build_train_data(config, dirs=dirs).train_iter
    try:
        return iterator_throughput(iterator, seconds)
    finally:
        iterator.close()
