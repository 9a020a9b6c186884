"""Errors whose message already names the fix; entry points print them as they are, in one line.

Below every other module (it imports nothing), so the core, data_pipelines and the entry points can all
raise them. Anything else that reaches an entry point is printed with its type and a hint to rerun with
--debug (`gato_jax.cli.run`).
"""
from __future__ import annotations


class GatoError(Exception):
    """Base of the errors whose message names the problem and the fix."""


class UsageError(GatoError, ValueError):
    """A mistake in what the user asked for (flags, config values, paths): exit status 2."""


class DataError(GatoError, FileNotFoundError):
    """A dataset is missing, half-written or made with other settings; the message names the command."""
