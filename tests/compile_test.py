"""`make compile`: the paper's 79M model lowered and compiled for 8 fake devices, from shapes alone."""
from __future__ import annotations

import re

import jax

from gato_jax import compile as compile_lib
from gato_jax import configs
from gato_jax.model import count_params
from gato_jax.tokenizers.vocab import VocabLayout


def test_gato_79m_compiles_for_8_devices(capsys):
    assert jax.device_count() == 8
    code = compile_lib.main(["--config", "experiments/generalist.py:gato_79m", "--devices", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    params = float(re.search(r"parameters ([\d.]+)M", out).group(1)) * 1e6
    flops = float(re.search(r"FLOPs per step ([\d.e+]+)", out).group(1))
    per_device, arguments = (float(x) for x in re.search(r"bytes per device ([\d.]+) GiB \(arguments ([\d.]+)",
                                                          out).groups())
    assert "'fsdp': 8" in out  # generalist:gato_79m shards parameters over every device.
    config = configs.model_config("gato_79m")
    layout = VocabLayout(text_size=23_000)
    assert abs(params - count_params(config, layout.padded_size)) < 0.05e6
    tokens = 512 * 1024
    assert 6 * params * tokens < flops < 9 * params * tokens  # 6N per token, plus attention and the ResNet.
    # Parameters and AdamW moments (3 x 4 bytes each, float32), sharded 8 ways, are most of the arguments.
    assert 0.9 * 12 * params / 8 < arguments * 2**30 < 1.5 * 12 * params / 8 and per_device > arguments
