"""gato_jax: a Gato-style generalist agent in JAX (flax.nnx)."""
import setuptools

CORE = [
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "chex>=0.1.92,<0.2",
    "gymnasium>=1.4,<1.5",
    "ale-py>=0.12.1,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "sentencepiece>=0.2.3,<0.3",
    "ml-collections>=1.1,<1.2",
    "numpy>=2.0,<3",
    "pillow>=10",
    "imageio>=2.30",
    "imageio-ffmpeg>=0.5",
    "matplotlib>=3.8",
    "tqdm>=4.60",
    "tensorboardX>=2.6",
    "absl-py>=2.0",
    "importlib_resources>=6.0",  # tensorflow-datasets 4.9.10 imports it without declaring it (tfds#11212).
]

setuptools.setup(
    name="gato_jax",
    version="0.1.0",
    description="One decoder-only transformer that acts, writes and captions, in JAX.",
    packages=setuptools.find_packages(include=["gato_jax*", "data_pipelines*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "ruff>=0.5", "scikit-image>=0.24"],
        "mujoco": ["gymnasium[mujoco]>=1.4,<1.5"],
        "tf": ["tensorflow-cpu>=2.16"],
    },
)
