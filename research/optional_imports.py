"""Packages that only some features need, imported when a feature is used.

The runtime (requirements.txt) has neither torch nor transformers: only reading PyTorch
`.bin` checkpoints and Hugging Face tokenizer folders use them. Such a feature calls
`import_optional(...)`, which fails in one line saying what to install; mains print it as
`error: ...` because MissingDependencyError is a ConfigError (and an ImportError for
library callers).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from research.models.config import ConfigError

# What each optional module is called for people, the pip command that provides it, and a tip.
PACKAGES = {
    "torch": ("PyTorch", "pip install torch",
              "the CPU build is enough: --index-url https://download.pytorch.org/whl/cpu"),
    "transformers": ("Hugging Face transformers", "pip install transformers", ""),
    "lm_eval": ("lm-evaluation-harness", "pip install lm-eval", ""),
}
# The setup.py extra that bundles each of them.
EXTRAS = {"torch": "pip install -e '.[hf]'", "transformers": "pip install -e '.[hf]'",
          "lm_eval": "pip install -e '.[lm-eval]'"}


class MissingDependencyError(ImportError, ConfigError):
    """A feature's optional package is not installed; the message says what to install."""


def require_installed(module: str, feature: str) -> None:
    """MissingDependencyError (as import_optional's) unless `module` is installed; imports nothing,
    for callers that must set the environment (threads, OMP policy) before the import."""
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise _missing(module, feature)


def _missing(module: str, feature: str) -> MissingDependencyError:
    name, install, tip = PACKAGES.get(module, (module, f"pip install {module}", ""))
    return MissingDependencyError(f"{feature} needs {name} ({install}), which is not installed"
                                  f"{'; ' + tip if tip else ''}; or {EXTRAS.get(module, install)}.", name=module)


def import_optional(module: str, feature: str) -> ModuleType:
    """`module`, imported; MissingDependencyError naming `feature` and the install command if it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        # Only the package itself being absent is a missing dependency; a broken install
        # (one of its own imports failing) keeps its real traceback.
        if error.name != module:
            raise
        raise _missing(module, feature) from None
