"""vdit-jax: VD-IT referring video object segmentation in JAX/Flax."""

import setuptools

# What training and inference need on a TPU/GPU host. Versions validated together are
# pinned in requirements/ci.txt; pass it with `-c` for a reproducible install.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "ml-collections>=1.1.0",
    "absl-py",
    "numpy",
    "ml-dtypes",
    "scipy",
    "pillow",
    "tensorboardX",
    "tqdm",
    "protobuf",
    "tfrecord",
    "crc32c",
    "h5py",
    "av",
    "pycocotools",
    "tokenizers",
    "safetensors",
]

# Weight conversion and the PyTorch parity references. torch stays pinned to the CPU build:
# an unpinned torch pulls a multi-GB CUDA wheel.
TORCH_REQUIRES = [
    "torch==2.13.0",
    "diffusers==0.42.1",
    "transformers==5.23.0",
    "safetensors",
]

# The datasets as TensorFlow Datasets builders (data_pipelines/tfds_builders.py; ArrayRecord,
# no TensorFlow). tensorflow-datasets 4.9.10 imports importlib_resources without declaring it
# (github.com/tensorflow/datasets/issues/11212).
TFDS_REQUIRES = ["tensorflow-datasets>=4.9.10", "importlib_resources"]

DEV_REQUIRES = TORCH_REQUIRES + TFDS_REQUIRES + ["pytest", "pytest-xdist", "pytest-timeout",
                                                 "psutil"]

setuptools.setup(
    name="vdit-jax",
    version="0.1.0",
    description="VD-IT referring video object segmentation on a frozen text-to-video "
    "diffusion backbone, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["vdit_jax*", "data_pipelines*", "configs*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"torch": TORCH_REQUIRES, "tfds": TFDS_REQUIRES, "dev": DEV_REQUIRES},
    license="Apache-2.0",
)
