"""`make bench` times batches laid out like the experiment's: its frame grid and caption images."""
from __future__ import annotations

import numpy as np

from gato_jax import bench, cli
from gato_jax.tokenizers.images import patch_intervals
from gato_jax.tokenizers.sequence import Modality
from gato_jax.tokenizers.vocab import VocabLayout


def _layout() -> VocabLayout:
    return VocabLayout.from_config(cli.load_experiment("experiments/atari_mix.py:smoke"))


def test_atari_rows_follow_the_frame_grid():
    layout = _layout()
    for patch, per_frame in ((16, 25), (40, 4)):
        seq = bench.atari_like_batch(layout, 2, 3 * (per_frame + 2), patch, frame_size=80)
        step = [Modality.IMAGE] * per_frame + [Modality.SEPARATOR, Modality.DISCRETE]
        np.testing.assert_array_equal(seq.modality[0], np.tile(step, 3))
        np.testing.assert_array_equal(seq.patch_pos[1, :per_frame], patch_intervals(80, 80, patch))
        assert seq.patches.shape[-1] == patch * patch * 3
        assert seq.loss_mask.sum() == 2 * 3  # One action target a timestep.


def test_caption_rows_follow_the_image_size():
    layout = _layout()
    for image, patch, n in ((32, 16, 4), (80, 40, 4), (48, 16, 9)):
        seq = bench.caption_rows(layout, 1, n + 14, patch, image_size=image)
        assert (seq.modality[0] == Modality.IMAGE).sum() == n
        np.testing.assert_array_equal(seq.patch_pos[0, 1:n + 1], patch_intervals(image, image, patch))
        assert not seq.patch_pos[0, n + 1:].any()
        # Targets: the 10 caption tokens and <eos>, never the image or its markers.
        np.testing.assert_array_equal(seq.loss_mask[0], np.r_[np.zeros(n + 3, bool), np.ones(11, bool)])
