"""Install the `research` library: `pip install -e .` (CPU), `.[cuda12]` / `.[cuda13]` (NVIDIA GPUs),
`.[tpu]` (Cloud TPU VMs); `.[hf]` adds torch + transformers for PyTorch .bin checkpoints and Hugging
Face tokenizer folders; `.[wandb]` Weights & Biases logging; `.[test]` the test suite's needs.

Ranges here; the exact versions the suite passed with are in requirements.txt (runtime) and
requirements-test.txt (runtime + test). A runtime dependency goes in INSTALL_REQUIRES and
requirements.txt, a test-only one in TEST_REQUIRES and requirements-test.txt.
"""
import setuptools

INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "array_record>=0.5",
    "datatrove>=0.10.1,<0.11",  # data preparation: executors, Gopher/C4 filters, MinHash dedup
    "etils[epath]>=1.5",  # launch/: gs:// paths kept intact
    "flax>=0.10,<0.13",
    "grain>=0.2.10",
    "jax>=0.6",
    "loguru>=0.7",
    "matplotlib>=3.8",
    "ml_collections>=0.1.1",
    "multiprocess>=0.70.16",
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
# Optional features: reading PyTorch .bin checkpoints (torch) and Hugging Face tokenizer
# folders (transformers). The runtime never imports them otherwise (research/optional_imports.py).
HF_REQUIRES = [
    "torch>=2.4",
    "transformers>=4.46",
]
WANDB_REQUIRES = ["wandb>=0.21"]  # research/training/metrics.py, only when config.wandb.project is set
TEST_REQUIRES = HF_REQUIRES + [  # torch + transformers: reference implementations for parity tests
    "pytest>=8",
    "pytest-xdist>=3.5",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "lm-eval>=0.4.9",
    "trl>=1.0",  # DPO / IPO loss reference
    "peft>=0.13",  # LoRA layer reference
    *WANDB_REQUIRES,  # optional W&B logging, tested offline
]
LM_EVAL_REQUIRES = ["lm-eval>=0.4.9"]  # research/evaluation/lm_eval_adapter.py

setuptools.setup(
    name="research",
    version="0.1.0",
    description="A pure-functional Flax model zoo and the studies around it: "
    "pretraining, scaling laws, emergent-ability evaluations.",
    # The pinned jax/jaxlib 0.10, numpy 2.4 and scipy 1.17 require Python >= 3.11. Tested: 3.11 (the
    # suite), 3.12 and 3.13 (runtime pins, a short pretraining, a dry-run sweep); see README "Versions".
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["research", "research.*", "experiments", "experiments.*", "launch", "launch.*"]),
    package_data={"research.evaluation.tasks": ["words.txt"]},  # the unscramble task's word list
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # jax's accelerator builds (same jax version, plus the CUDA / TPU plugin and runtime libraries).
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        "hf": HF_REQUIRES,
        # lm-evaluation-harness adapter (pulls torch + transformers). Spelt with "-", as pip writes
        # extras in the metadata: pip before 24 does not match "[lm_eval]" to it.
        "lm-eval": LM_EVAL_REQUIRES,
        "wandb": WANDB_REQUIRES,  # optional W&B logging beside TensorBoard (config.wandb.project)
        "test": TEST_REQUIRES,
    },
)
