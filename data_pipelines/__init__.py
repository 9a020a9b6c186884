"""Data for gato_jax: control tasks and their expert demonstrations (TFDS, ArrayRecord, no TensorFlow).

`tasks` names the environments and their token specs, `experts` holds the scripted policies that
play them, and `episodes` records, filters, stores and reloads their episodes.
"""
