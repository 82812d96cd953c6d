"""A fine-tuning head's labels on a split 'classes' axis are one line, and the workdir is left as it was.

A classifier's num_labels (a ModelConfig field) and a tagger's num_token_labels (the run's config)
were never checked against the mesh: ('classes', 'tensor') on tensor=4 with 3 labels died in JAX's
IndivisibleError while placing the params, leaving the workdir claimed (run.json, lock, checkpoints/)."""
import pytest

from research.finetune import finetune_and_evaluate
from research.models.config import ConfigError
from research.sharding import DEFAULT_RULES
from tests.finetune.conftest import tiny_config


@pytest.mark.parametrize("preset, setting, field", [
    ("classify_tiny", ("model", "num_labels"), "num_labels=3"),
    ("tag_tiny", (None, "num_token_labels"), "head/bias's classes dimension=3"),
])
def test_labels_that_do_not_split_over_the_mesh_are_refused_in_one_line(tmp_path, preset, setting, field):
    config = tiny_config(preset, num_steps=1)
    section, key = setting
    (config[section] if section else config)[key] = 3
    config.mesh.shape = (2, 1, 4)
    config.mesh.rules = tuple((n, "tensor") if n == "classes" else (n, a) for n, a in DEFAULT_RULES)
    with pytest.raises(ConfigError, match=rf"^model .*: {field} does not split over mesh axis tensor of size 4.*"
                                          r"or the rule \('classes', None\) to replicate it") as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # the claim withdrawn, as for any refused config
