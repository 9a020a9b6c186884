"""Log levels for the command-line entry points: our progress at INFO, libraries' chatter hidden."""
from __future__ import annotations

import logging

OUR_PACKAGES = ("gato_jax", "data_pipelines")


def quiet_libraries() -> None:
    """Root (orbax, tfds, absl via absl's handler) at WARNING; gato_jax and data_pipelines at INFO."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
