"""Install the `research` library: `pip install -e .` (add `[test]` for the test suite)."""
import setuptools

INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "array_record>=0.5",
    "flax>=0.10,<0.13",
    "grain>=0.2.10",
    "jax>=0.6",
    "matplotlib>=3.8",
    "ml_collections>=0.1.1",
    "numpy>=1.26",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "safetensors>=0.4",
    "scipy>=1.12",
    "sentencepiece>=0.2",
    "tensorboardX>=2.6",
    "tensorflow-datasets>=4.9.7",
    "tqdm>=4.66",
    # fine-tuning task metrics (research/finetune/evaluators.py)
    "scikit-learn>=1.4",
    "rouge-score>=0.1.2",
    "sacrebleu>=2.4",
]
TEST_REQUIRES = [
    "pytest>=8",
    "torch>=2.4",  # reference implementations for parity tests (CPU build is enough)
    "transformers>=4.46",
    "pytest-xdist>=3.5",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "trl>=1.0",  # DPO / IPO loss reference
    "peft>=0.13",  # LoRA layer reference
]

setuptools.setup(
    name="research",
    version="0.1.0",
    description="A pure-functional Flax model zoo and the studies around it: "
    "pretraining, scaling laws, emergent-ability evaluations.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["research", "research.*", "experiments", "experiments.*", "launch", "launch.*"]),
    package_data={"research.evaluation.tasks": ["words.txt"]},  # the unscramble task's word list
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
