"""Shared config pieces: the base ConfigDict every experiment starts from, and model size presets.

Experiments (experiments/NAME.py) call `base_config()`, set what differs, and return it locked.
Every field is commented with its unit; docs/TOKEN_FORMAT.md decisions marked [D] are defaults here.
"""
from __future__ import annotations

import ml_collections

# Values of `config.data.frame_filter`, checked by gato_jax.cli; data_pipelines/tasks.py implements each
# (and may not import this module: tests/episodes_test.py keeps the two lists equal).
FRAME_FILTERS = ("area", "salient")

# Sizes from docs/TOKEN_FORMAT.md ("Model sizes"): layers, width, MLP, heads, head dim.
MODEL_PRESETS = {
    "gato_1_18b": dict(num_layers=24, d_model=2048, mlp_dim=8192, num_heads=16, head_dim=128),
    "gato_364m": dict(num_layers=12, d_model=1536, mlp_dim=6144, num_heads=12, head_dim=128),
    "gato_79m": dict(num_layers=8, d_model=768, mlp_dim=3072, num_heads=24, head_dim=32),
    # CPU-sized default: trains on 2 cores in under an hour.
    "cpu_small": dict(num_layers=4, d_model=256, mlp_dim=1024, num_heads=4, head_dim=64),
    # Tests and smoke runs: compiles in seconds.
    "tiny": dict(num_layers=2, d_model=64, mlp_dim=128, num_heads=4, head_dim=16),
}


def model_config(preset: str = "cpu_small") -> ml_collections.ConfigDict:
    """Transformer hyper-parameters for a named preset."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}.")
    m = ml_collections.ConfigDict()
    m.preset = preset  # Name only, for reports.
    m.num_layers = MODEL_PRESETS[preset]["num_layers"]  # Decoder blocks.
    m.d_model = MODEL_PRESETS[preset]["d_model"]  # Residual width.
    m.mlp_dim = MODEL_PRESETS[preset]["mlp_dim"]  # Hidden width of each MLP.
    m.num_heads = MODEL_PRESETS[preset]["num_heads"]  # Attention heads.
    m.head_dim = MODEL_PRESETS[preset]["head_dim"]  # Width of each head.
    m.patch_size = 16  # Pixels per image patch side [P].
    m.resnet_channels = 32  # Channels of the patch ResNet v2 block; GroupNorm needs a multiple of 32 [A].
    m.patch_stem_stride = 4  # Stride (= kernel) of the stem conv before the ResNet block [D].
    m.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
    m.param_dtype = "float32"  # Parameter storage dtype.
    m.remat = False  # Rematerialise each block in the backward pass (saves activation memory).
    m.dropout_rate = 0.0  # Dropout on residual branches; 0 disables.
    # Attention position signal [D]: "alibi" adds -slope_h * (query - key distance in tokens) to the
    # scores (Press et al. 2022; geometric slopes per head), "none" leaves causal order as the only signal
    # (NoPE). Without it, attending to the latest observation was slow to learn.
    m.position_bias = "alibi"
    # Attention mask [D]: "causal" (Gato: each token sees itself and earlier tokens of its segment) or
    # "semi_causal" (MetaLM): tokens of one span see each other in both directions, everything else stays
    # causal, so every later token still sees every earlier image. Spans: "images" (one image's patches)
    # or "observations" (every observation token of one timestep: its images and its values).
    m.attention = "causal"
    m.semi_causal_spans = "images"
    # Image encoder [D]: "patches" (one token per patch from the patch ResNet) or "resampler" (KOSMOS-1 /
    # Flamingo perceiver resampler: `resampler_tokens` learned queries cross-attend to one image's patch
    # embeddings and give that many tokens; an image with fewer patches keeps one token per patch).
    m.image_encoder = "patches"
    m.resampler_tokens = 4
    m.resampler_layers = 1  # Cross-attention + MLP layers of the resampler.
    # Smeared keys (Olsson et al. 2022): every decoder key mixes in the previous token's key through a
    # learned per-head gate, so "the word that followed an image like this one" is found in one attention
    # step (README "Where the lookup stalls"). Off by default: nothing measured it on agent data.
    m.smear_keys = False
    # Which model (issue 14): "gato" (the decoder above) or "prismer" (`gato_jax.model.prismer`: the same
    # decoder, images taken out of its sequence and read instead through gated cross-attention from a
    # vision encoder of frozen experts and a trainable expert resampler; needs image_encoder="patches").
    m.kind = "gato"
    m.prismer = ml_collections.ConfigDict()  # Read only when kind == "prismer" (PrismerDims).
    m.prismer.experts = ("edges", "segments", "shapes")  # Frozen experts that run, from perception.EXPERTS.
    # RGB colours of the 'segments' expert; experiments set data_pipelines.captions.COLOURS + black.
    m.prismer.palette = ((0, 0, 0),)
    # Orbax checkpoint of the learned 'shapes' expert; empty = the entry point sets it to the prepared
    # "shape_expert" dataset (data_pipelines/prepare.py) before the model is built.
    m.prismer.shape_expert_dir = ""
    m.prismer.image_size = 32  # Side of every image in pixels (R = (image_size / patch_size)^2 patches).
    m.prismer.max_images = 24  # Image slots per row; images past this many in a row are not seen.
    m.prismer.num_queries = 4  # Resampler tokens Q per expert.
    m.prismer.resampler_layers = 1  # Perceiver-resampler layers (shared by the experts).
    m.prismer.resampler_mlp_dim = 0  # Hidden width of the resampler's MLPs; 0 = d_model.
    m.prismer.expert_pool = 2  # Expert maps are average-pooled by this factor before their patch projection.
    m.prismer.rgb_tokens = True  # Also give the decoder the image's own patch embeddings (R tokens).
    # A gated cross-attention layer before every k-th decoder block (k divides num_layers), with a gated
    # MLP after it or not. 2 and False keep cpu_small's trainable fraction under 0.3 with a frozen decoder.
    m.prismer.cross_attention_every = 2
    m.prismer.cross_attention_mlp = False
    return m


def train_config() -> ml_collections.ConfigDict:
    """How the train step computes (never what): the sparse path gives the plain path's loss and gradients."""
    t = ml_collections.ConfigDict()
    # Logits only at positions a target follows, and the patch ResNet (its convolutions as matrix
    # products) only at image positions, each gathered up to a static cap (the smallest of the caps below
    # that holds them; the full computation when none does, so no target is ever dropped), and the layer
    # scan unrolled per `scan_unroll`. False runs the plain path (`make bench` times both side by side).
    t.sparse = True
    # Caps on positions followed by a target, as fractions of batch_size * seq_len. An Atari timestep has
    # 1 target in 27 tokens, text nearly 1 in 1; atari_mix batches hold ~4% (all Atari) to ~25%.
    t.loss_position_caps = (0.0625, 0.1875, 0.25)
    # Caps on image positions, fractions of batch_size * seq_len (Atari windows are 25/27 = 93% patches).
    # Each cap is one more branch whose residuals the backward pass zero-fills when another branch runs
    # (gato_jax/model/sparse.py), so fewer caps fitted to the layout can be faster: see atari_mix.
    t.image_position_caps = (0.5, 0.8125, 0.9375)
    # Layers per iteration of the scan over layers in the sparse step; 0 unrolls them all (no stacked
    # per-layer residuals in the backward pass: ~15% of a cpu_small step; compile time grows with layers).
    t.scan_unroll = 0
    # Frozen parameter groups: regular expressions over parameter names ('blocks/attn/query/kernel',
    # 'vision/resampler/queries'; `train.partial`). A frozen parameter gets no optimizer state and no
    # update; a pattern that names no parameter is an error. () trains everything.
    t.frozen = ()
    # Warm start (fresh runs only; a resumed run reads its own checkpoint): the parameters named by
    # `params` (regexes; () = every parameter) read from another run's checkpoint onto this mesh.
    t.warm_start = ml_collections.ConfigDict()
    t.warm_start.workdir = ""  # The source run's workdir (or its checkpoints/); empty = no warm start.
    t.warm_start.step = -1  # Its checkpoint step; -1 = the latest readable one.
    t.warm_start.params = ()  # Which parameters, e.g. ("^embed/token", "^blocks/", "^final_norm/").
    t.warm_start.rename = ()  # (regex, replacement) pairs from a name here to the name in the source.
    return t


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment; experiments override fields and lock the result."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds the prepared data and evaluation episodes, and (with the offset below) training.
    # Added to `seed` for what training draws (parameters, data order, dropout, DAgger rounds' sampling) but
    # not for the data it prepares or the episodes it is evaluated on: another value trains an independent
    # replicate on the same data, scored on the same episodes (run-to-run spread). See train_seed().
    c.train_seed_offset = 0
    c.seq_len = 1024  # Tokens per training sequence (context window) [P].
    c.batch_size = 512  # Global sequences per step, over all processes [P].
    c.num_train_steps = 1_000_000  # Optimizer steps [P].
    c.log_every = 10  # Steps between metrics.jsonl rows.
    c.eval_every = 500  # Steps between held-out loss evaluations (0 disables).
    c.eval_batches = 4  # Held-out batches per evaluation.
    c.checkpoint_every = 1000  # Steps between checkpoints (one is always written at the end).
    c.max_checkpoints_to_keep = 3  # Older checkpoints are deleted.

    c.model = model_config("cpu_small")

    c.vocab = ml_collections.ConfigDict()
    c.vocab.text_size = 32000  # SentencePiece pieces; ids [0, text_size) [P].
    c.vocab.num_continuous_bins = 1024  # mu-law bins over [-1, 1] [P].
    c.vocab.num_discrete = 1024  # Discrete values 0..1023, after the bins [D].

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.peak_lr = 1e-4  # Peak learning rate (1e-4 for 1.18B) [A].
    c.optimizer.init_lr = 1e-7  # Learning rate at step 0 of the warm-up [A].
    c.optimizer.warmup_steps = 15_000  # Linear warm-up length in steps [A].
    c.optimizer.decay_factor = 10.0  # Cosine decays the peak by this factor by the last step [A].
    c.optimizer.b1 = 0.9  # AdamW beta1 [A].
    c.optimizer.b2 = 0.95  # AdamW beta2 [A].
    c.optimizer.eps = 1e-8  # AdamW epsilon [A].
    c.optimizer.weight_decay = 0.1  # Decoupled weight decay on matrices [A].
    c.optimizer.grad_clip = 1.0  # Global gradient-norm clip [D].

    c.train = train_config()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Data-parallel axis size; -1 takes the devices left over.
    c.mesh.fsdp = 1  # Parameter-sharding (FSDP) axis size.
    c.mesh.tensor = 1  # Tensor-parallel axis size (heads, MLP width).

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # "host:port"; empty = auto-detect (TPU, SLURM) or single process.
    c.distributed.num_processes = 0  # 0 = auto-detect.
    c.distributed.process_id = -1  # -1 = auto-detect.

    c.data = ml_collections.ConfigDict()
    # Dataset root; empty = $GATO_DATA_DIR, else ./data. Each dataset lives in <root>/<name>-<hash of its
    # settings>, so smoke and full datasets (or any two settings) sit side by side (data_pipelines.prepare).
    c.data.dir = ""
    c.data.mixture = ml_collections.ConfigDict()  # Source name -> sampling weight (normalised).
    c.data.episodes_per_task = 100  # Expert episodes generated per control task.
    c.data.max_episode_steps = 1000  # Step cap when generating episodes.
    c.data.frame_size = 80  # Atari frames: grayscale, resized to frame_size x frame_size [D].
    # How a frame is resized [D]: "area" averages each output pixel's source pixels (a ball smaller than a
    # pixel fades), "salient" keeps the one furthest from the background (every object at full contrast);
    # data_pipelines/tasks.py.
    c.data.frame_filter = "area"
    # Frames per image [D]: 1 replicates the grayscale frame into the patch's three channels (Gato's one
    # frame per timestep); 2-3 put the frames before it in the other channels, so a patch shows motion
    # (`tokenizers.images.frame_history`). Read when tokenizing; stored datasets do not change.
    c.data.frame_history = 1
    c.data.prompt_prob = 0.25  # Fraction of control sequences prefixed by a demonstration prompt [P].
    c.data.prompt_end_fraction = 0.5  # Of prompts, the fraction taken from an episode's end [P].
    c.data.min_return_fraction = 0.8  # Keep episodes with return >= this fraction of the expert's [P].
    # DART recording [D]: noise in the *executed* actions, labels always the expert's clean action for the
    # state reached (README "Data"). Discrete: a random action burst of 1..hold steps starts with this
    # probability per step (~13% of steps executed as noise at 0.06 and 4); continuous: Gaussian std as
    # a fraction of the action bound.
    c.data.record_noise_prob = 0.06
    c.data.record_noise_hold = 4
    c.data.record_noise_std = 0.2
    c.data.reference_episodes = 30  # Episodes of the expert and of random play behind each reference score.
    c.data.text_vocab_size = 32000  # SentencePiece model size trained on the corpus (sets vocab.text_size).
    c.data.caption_train_examples = 4000  # Procedural scenes for training captions.
    c.data.caption_test_examples = 400  # Held-out scenes (some colour-shape pairs never seen in training).
    c.data.caption_image_size = 32  # Caption images are caption_image_size^2 RGB (a multiple of 16).
    # Interleaved image-text examples (data_pipelines/documents.py; mixture names "documents",
    # "questions", "fewshot"), per kind, drawn at caption_image_size.
    c.data.document_train_examples = 3000
    c.data.document_test_examples = 300
    c.data.fewshot_label_loss = False  # Also train on the demonstrations' words, not only the query's.
    # Training few-shot episodes are made afresh on demand, with 1 to this many demonstrations and classes
    # drawn independently (documents.FreshEpisodes): practically none recurs, so none is memorised. 0 trains
    # on the stored train split instead (4 demonstrations in pairs, as the held-out episodes).
    c.data.fewshot_train_max_shots = 8
    # Share of those fresh episodes whose images differ only in the attribute the words name (one base
    # scene, the rest fixed): the query then matches its class's demonstrations whole, an easier lookup.
    c.data.fewshot_train_one_difference = 0.0
    # Share of fresh episodes (drawn independently of the above) that repeat one drawing per class, so the
    # query equals its class's demonstrations pixel for pixel (a lookup by exact match, the easiest there is).
    c.data.fewshot_train_identical = 0.0
    # Share of fresh episodes (drawn independently again) shown as text: each image replaced by its class's
    # value, "red :", then the word. The same lookup on token keys, where it forms fast with smeared keys.
    c.data.fewshot_train_text = 0.0
    # A second stage of that curriculum (0: none): from training step `fewshot_late_step` on, fresh episodes
    # are drawn with the text and identical shares below instead. The easy kinds are stepping stones: once
    # the lookup has formed on them they cost ~0 nats and teach nothing, so the later steps go to the
    # held-out kind (`stream.curriculum_config`; the run pauses there with a checkpoint, as at a DAgger round).
    c.data.fewshot_late_step = 0
    c.data.fewshot_late_text = 0.0
    c.data.fewshot_late_identical = 0.0
    c.data.caption_digits = True  # Mix scikit-learn's digits into captions (False: scenes only).
    # Delete every image position from the training and held-out examples (a text-only run whose decoder
    # then warm-starts a model.kind="prismer" run, which reads images only through cross-attention).
    c.data.drop_images = False
    c.data.num_workers = 0  # grain worker processes (0 = in the main process).

    # DAgger rounds (Ross et al. 2011; gato_jax/dagger.py), off by default [D]. At each step in `steps` the
    # run pauses: the checkpoint plays `episodes` episodes of each task in `tasks` (() = every control task
    # of the mixture that has an expert) under the evaluation settings, each state it reaches labelled with
    # the expert's action; the rest of training draws `share` of that task's windows from these rounds.
    # `beta`: the share of a round's steps on which the expert's action is executed instead of the model's
    # (DAgger's mixing; every step keeps the expert's label either way), in the round tasks named in
    # `mixed_tasks` (() = every round task); the others' rounds are the model's play alone.
    c.dagger = ml_collections.ConfigDict()
    c.dagger.steps = ()
    c.dagger.episodes = 25
    c.dagger.share = 0.5
    c.dagger.beta = 0.0
    c.dagger.mixed_tasks = ()
    c.dagger.tasks = ()
    # The mixing waits where the expert's label (a discrete action) is one of `model_first_labels[task]`,
    # for up to `model_first_steps` steps in a row, so the model acts alone there (experts.ExpertLabels:
    # Breakout's serve, which the expert's half of the steps otherwise took before the model met it).
    c.dagger.model_first_labels = ml_collections.ConfigDict()
    c.dagger.model_first_steps = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 50  # Rollouts per task [P].
    c.eval.num_envs = 25  # Environments stepped in one batch (divides 50; throughput flattens past 16-32).
    c.eval.max_steps = 2000  # Episode step cap at evaluation.
    c.eval.sticky_actions = 0.25  # ALE v5 repeat-action probability at evaluation.
    c.eval.prompted = True  # Pin a demonstration prompt at the front of the context.
    # Episode i resets with seed config.seed + seed_offset + i (sampling keys follow it). Another offset
    # evaluates the same checkpoint on other episodes without touching config.seed, which also keys the data.
    c.eval.seed_offset = 0
    c.eval.temperature = 1.0  # Sampling temperature of discrete actions (Atari: sampling beat greedy play).
    # Of continuous actions [D]: 0 takes each dimension's likeliest bin. Sampling 1024 bins at temperature 1
    # dropped the InvertedPendulum pole after 83 steps on average; greedy kept it up for all 1000 (README "Results").
    c.eval.continuous_temperature = 0.0
    # At continuous temperature 0 [D]: act on the bin nearest the mean of the model's distribution over the
    # bins rather than on its likeliest bin (README "Results", `control_mix`: the same checkpoints' pendulum
    # 0.509 / 0.111 with the likeliest bin, 0.985 / 0.965 with the mean).
    c.eval.continuous_mean = True
    # Episodes of each discrete-action task's expert with the model's held-out error rate of random errors
    # (report column "expert erring as often"); 0 skips them.
    c.eval.matched_error_episodes = 30
    c.eval.caption_examples = 200  # Held-out captions scored for exact match.
    c.eval.question_examples = 280  # Held-out visual questions scored (40 of each of the 7 types).
    c.eval.fewshot_examples = 200  # Held-out few-shot episodes scored at each number of shots.
    # Unpaired episodes on held-out images whose every word's loss is reported (0: none), and their length.
    c.eval.fewshot_word_episodes = 64
    c.eval.fewshot_word_shots = 8
    c.eval.text_batches = 8  # Held-out text batches for perplexity.
    return c


def cpu_experiment_config() -> ml_collections.ConfigDict:
    """Base for the CPU-sized experiments: short context, small batch, a 1000-piece text vocabulary."""
    c = base_config()
    c.seq_len = 256  # ~9 Atari timesteps of 27 tokens each.
    c.batch_size = 16
    c.num_train_steps = 3000  # ~1 s/step for cpu_small on 2 cores (README "Results"): under an hour.
    c.checkpoint_every = 400
    c.max_checkpoints_to_keep = 10  # All 8 of a 3000-step run (45 MB each): `make eval ARGS=--curve` reads them.
    c.eval_every = 250
    c.vocab.text_size = 1000
    c.data.text_vocab_size = 1000
    c.optimizer.peak_lr = 1e-3  # Small models tolerate a higher peak than the 1.18B's 1e-4.
    c.optimizer.warmup_steps = 200
    c.data.episodes_per_task = 60  # ~60k steps per game: about one pass in an hour of training.
    # DART labels are the expert's clean action in every episode, so an episode's return measures the
    # noise it met, not its labels' quality; the paper's 80% filter would drop the recovery data DART
    # is recorded for (half of Boxing's). Keep every episode that does at least as well as random.
    c.data.min_return_fraction = 0.0
    c.data.max_episode_steps = 1000  # Recording cap; keeps `make data` for atari_mix near 10 minutes.
    c.eval.max_steps = 1000  # Same cap as the stored expert/random returns, so normalised scores compare.
    return c


def train_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of what training draws: config.seed + config.train_seed_offset (0 in checkpoints made before it)."""
    return int(config.seed) + int(config.get("train_seed_offset", 0))


def apply_atari_play(c: ml_collections.ConfigDict, games: tuple[str, ...]) -> None:
    """The frame layout, step budget and DAgger rounds with which atari_mix's games reached half the expert.

    atari_mix and control_mix share it, so that control_mix's games train as atari_mix's do (README "Results").
    """
    # Each 80x80 frame is 4 patches of 40x40 (an 8x8-stride stem, so each patch's ResNet block sees a 5x5
    # grid): 6 tokens per timestep instead of 27, so a 256-token window holds 42 timesteps and a step
    # trains on ~4.5x as many actions (~3x per second). Each patch holds the frame and the two before it.
    c.model.patch_size, c.model.patch_stem_stride = 40, 8
    c.data.caption_image_size = 80  # Caption images too: a multiple of the patch and of the scene generator's 16.
    c.data.frame_history = 3
    # One sparse cap each for the patch ResNet (batches hold 56-61% image positions) and two for the logits
    # (17-26% targets): reverse mode through the cap switch fills every branch's residuals but the one taken
    # with zeros, [cap, 4800]-sized at 40-px patches, so the base config's three caps cost ~20% of a step.
    c.train.image_position_caps, c.train.loss_position_caps = (0.625,), (0.25, 0.3125)
    c.num_train_steps = 1850  # Under 60 minutes on 2 cores with the two rounds below.
    c.checkpoint_every = 200  # All 10 kept (max_checkpoints_to_keep): the held-out curve reads them.
    # Two DAgger rounds (gato_jax/dagger.py): at steps 750 and 1300 the model plays 25 episodes of each game,
    # the experts label every state it reached, and from then on half of each game's windows come from the
    # rounds so far. In Breakout and Boxing the expert co-drives half the rounds' steps (beta): alone,
    # Breakout's model rarely served and 81% of its round was FIRE labels on ball-less screens. Pong learns
    # from its own misses: beta 0.5 there gave 0.17 against 0.33 without.
    c.dagger.steps, c.dagger.tasks = (750, 1300), games
    c.dagger.beta, c.dagger.mixed_tasks = 0.5, tuple(g for g in ("atari_breakout", "atari_boxing") if g in games)
    # ... but on Breakout's ball-less screens (the expert's label FIRE) the model acts alone for up to 8 steps
    # in a row before the expert's share resumes: with the expert serving within ~2 steps, FIRE was 2.5% of
    # the rounds' labels and the model still seldom served.
    if "atari_breakout" in games:
        c.dagger.model_first_labels = ml_collections.ConfigDict({"atari_breakout": (1,)})  # Breakout's FIRE.
        c.dagger.model_first_steps = 8


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks model, data and steps so the whole path (data, train, eval) runs in minutes on 2 cores."""
    # Only the sizes shrink: the experiment's patching, attention and image encoder stay, so the smoke
    # run exercises the same architecture and token layout as the full one.
    c.model.update({"preset": "tiny", **MODEL_PRESETS["tiny"]})
    c.seq_len, c.batch_size, c.num_train_steps = 128, 8, 20
    c.checkpoint_every = c.eval_every = 10
    c.eval_batches = 1
    c.optimizer.warmup_steps = 5
    c.data.episodes_per_task, c.data.max_episode_steps, c.data.reference_episodes = 3, 200, 2
    c.data.caption_train_examples, c.data.caption_test_examples = 200, 40
    c.eval.episodes, c.eval.num_envs, c.eval.max_steps = 2, 2, 100
    c.eval.matched_error_episodes = 2
    if c.dagger.steps:  # The experiment's DAgger round, at the smoke run's midpoint.
        c.dagger.steps, c.dagger.episodes = (c.num_train_steps // 2,), 2
    if c.data.fewshot_late_step:  # The curriculum's late stage, at the midpoint too.
        c.data.fewshot_late_step = c.num_train_steps // 2
    c.eval.caption_examples, c.eval.text_batches = 10, 1
    c.data.document_train_examples, c.data.document_test_examples = 60, 21
    c.eval.question_examples, c.eval.fewshot_examples = 14, 8
    c.eval.fewshot_word_episodes, c.eval.fewshot_word_shots = 4, 2


def finalize(c: ml_collections.ConfigDict, arg: str | None, name: str) -> ml_collections.ConfigDict:
    """Applies the config argument (only `smoke` is shared), checks consistency and locks."""
    if arg == "smoke":
        apply_smoke(c)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r} for {name}; use ':smoke' or nothing.")
    if c.vocab.text_size != c.data.text_vocab_size:
        raise ValueError(f"{name}: vocab.text_size ({c.vocab.text_size}) must equal data.text_vocab_size "
                         f"({c.data.text_vocab_size}), the SentencePiece model size.")
    c.lock()
    return c
