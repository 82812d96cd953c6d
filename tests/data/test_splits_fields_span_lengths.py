"""Three silent mistakes, now refused in one line before any long work: TFDS train / validation
splits that read common examples, a text_field that is not text, and span corruption rows
longer than T5's helper makes them (or than the model takes)."""
import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import CausalLM, DataConfig, DataError, MaskedLM, SpanCorruption, make_batch_iterator
from research.data import pipeline
from research.data.objectives import span_corruption_lengths
from research.data.pipeline import batches_from_token_documents, check_batch_shape
from research.data.sources import document_source
from tests.data.handmade import HANDMADE, random_documents


class SplitCheckCorpus(tfds.core.GeneratorBasedBuilder):
    """30 train and 10 validation examples with one Text feature and features that are not text."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums or docs next to this module (TFDS would look them up there)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2),
            "tags": tfds.features.Sequence(tfds.features.Text()),
            "vector": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            "note": tfds.features.Tensor(shape=(), dtype=np.object_),  # a scalar string: text
            # TFDS's Hugging Face wrapper stores string columns so: text too (once refused).
            "hf_text": tfds.features.Scalar(dtype=np.object_)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 30), "validation": self._generate_examples(30, 40)}

    def _generate_examples(self, first, end):
        for i in range(first, end):
            yield i, {"text": f"document {i}", "label": i % 2, "tags": ["x", "y"], "vector": [i, i],
                      "note": f"note {i}", "hf_text": f"hf {i}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    SplitCheckCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return lambda **kw: DataConfig(source="tfds", tfds_name="split_check_corpus", data_dir=data_dir, **kw)


def _texts(config, split):
    docs = document_source(config, split)
    return [docs[i] for i in range(len(docs))]


@pytest.mark.parametrize("train_split, validation_split, shared", [
    ("train", "train[:10%]", 3),  # once: validation scored 3 training documents as held out
    ("train+validation", "validation", 10),
    ("train[:60%]", "train[50%:]", 3),
    ("train[:5]", "train[4:]+validation", 1),
])
def test_tfds_splits_that_share_examples_are_one_line_whichever_is_opened(corpus, train_split, validation_split,
                                                                         shared):
    config = corpus(train_split=train_split, validation_split=validation_split)
    for split in ("train", "validation"):
        with pytest.raises(DataError, match=rf"share {shared} examples, so validation would score training data"
                                            r"; use disjoint slices") as error:
            document_source(config, split)
        assert "\n" not in str(error.value)


def test_disjoint_tfds_slices_still_read(corpus):
    with pytest.raises(DataError, match="share 3 examples"):  # the refusal above, for contrast
        document_source(corpus(validation_split="train[:10%]"), "train")
    train, validation = _texts(corpus(train_split="train[10%:]", validation_split="train[:10%]"), "train"), \
        _texts(corpus(train_split="train[10%:]", validation_split="train[:10%]"), "validation")
    assert len(train) == 27 and len(validation) == 3 and not set(train) & set(validation)
    # 1% of 30 rounds to no examples: TFDS's own arithmetic, so 'train[1%:]' is all of train.
    assert len(_texts(corpus(train_split="train[1%:]", validation_split="train[:1%]"), "train")) == 30
    assert len(_texts(corpus(), "validation")) == 10
    # A validation split the dataset lacks is refused when it is opened, not when train is.
    assert len(_texts(corpus(validation_split="test"), "train")) == 30


@pytest.mark.parametrize("field, kind", [("label", "ClassLabel"), ("tags", "Sequence"), ("vector", "Tensor")])
def test_a_text_field_that_is_not_text_is_one_line_before_reading(corpus, monkeypatch, field, kind):
    def no_reading(*args, **kwargs):
        raise AssertionError("read the data before refusing the field")

    with monkeypatch.context() as patch:
        patch.setattr(SplitCheckCorpus, "as_data_source", no_reading)
        with pytest.raises(DataError, match=rf"^TFDS dataset 'split_check_corpus': text_field='{field}' is a "
                                            rf"{kind} feature, not text; set text_field to one of its Text "
                                            r"features \['hf_text', 'note', 'text'\]\.$"):
            document_source(corpus(text_field=field), "train")
    # Once str()-ed: documents '0' / '1', "[b'x' b'y']". Text fields still read as text.
    assert sorted(_texts(corpus(text_field="text"), "validation")) == [f"document {i}" for i in range(30, 40)]
    assert sorted(_texts(corpus(text_field="note"), "validation")) == [f"note {i}" for i in range(30, 40)]
    assert sorted(_texts(corpus(text_field="hf_text"), "validation")) == [f"hf {i}" for i in range(30, 40)]


def _t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length):
    """t5.data.preprocessors.random_spans_helper (one sentinel per span on either side), and
    whether its unclamped counts are the ones T5's mask uses (at least one noise token and span)."""
    def lengths(tokens_length):
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1, num_noise >= 1 and num_spans >= 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length, unclamped = lengths(tokens_length)
    unclamped = unclamped and lengths(tokens_length + 1)[2]
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return (tokens_length, targets_length), unclamped


def test_span_corruption_lengths_are_t5s_random_spans_helper_including_its_density_half_case():
    # Once (766, 513) at 512: decoder rows one longer than a T5 with max_len 512 takes.
    assert span_corruption_lengths(512, 0.5, 3.0) == (766, 512)
    assert SpanCorruption(noise_density=0.5).packed_lengths(512)["decoder_targets"] == 512
    assert span_corruption_lengths(512) == (568, 114)
    compared = 0
    for density in (0.15, 0.3, 0.5):
        for mean in (2.0, 3.0, 8.0):
            for inputs_length in range(16, 600):
                expected, unclamped = _t5_random_spans_helper(inputs_length, density, mean)
                if unclamped:
                    assert span_corruption_lengths(inputs_length, density, mean) == expected, \
                        (inputs_length, density, mean)
                    compared += 1
    assert compared > 4000


def test_span_corruption_at_density_half_fills_rows_of_seq_len():
    seq_len = 64
    documents = random_documents(60, seed=3, min_len=1, max_len=300)
    batches = list(batches_from_token_documents(
        grain.MapDataset.source(documents), objective=SpanCorruption(noise_density=0.5), special=HANDMADE,
        batch_size=4, seq_len=seq_len, seed=0, num_epochs=1))
    assert {batch["decoder_targets"].shape[1] for batch in batches} == {seq_len}
    assert {batch["encoder_inputs"].shape[1] for batch in batches} == {seq_len}


def test_the_model_max_len_check_covers_the_objectives_packed_rows(tokenizer, monkeypatch):
    with pytest.raises(DataError, match=r"^span_corruption at seq_len=64 packs decoder_inputs rows of 112 tokens, "
                                        r"longer than the model's max_len=64; lower seq_len") as error:
        check_batch_shape(2, 64, 64, SpanCorruption(noise_density=0.7))
    assert "\n" not in str(error.value)
    check_batch_shape(2, 512, 512, SpanCorruption(noise_density=0.5))  # 512 / 512 fits
    check_batch_shape(2, 64, 64, "causal_lm")

    def no_reading(*args, **kwargs):
        raise AssertionError("read documents before checking the row lengths")

    monkeypatch.setattr(pipeline, "document_source", no_reading)
    with pytest.raises(DataError, match="packs decoder_inputs rows of 112 tokens"):
        make_batch_iterator(DataConfig(source="stdlib", max_documents=5), tokenizer=tokenizer,
                            objective=SpanCorruption(noise_density=0.7), batch_size=2, seq_len=64,
                            shard_index=0, shard_count=1, model_max_len=64)


@pytest.mark.parametrize("objective, seq_len, message", [
    (MaskedLM(mask_rate=1.5), 32, r"^masked_lm: mask_rate=1.5 must be in \(0, 1\)"),
    (SpanCorruption(noise_density=0.6, mean_span_length=1.0), 64,
     r"^span_corruption: at seq_len=64, noise_density=0.6 with mean_span_length=1.0 makes 38 noise spans"),
    (CausalLM(), 1, r"^causal_lm: seq_len=1 must be at least 2\.$"),
])
def test_the_shape_check_refuses_objective_settings_no_tokenizer_could_make_work(objective, seq_len, message):
    """check_batch_shape runs before any tokenizer exists; these were refused only by validate,
    in make_batch_dataset, after the loop had claimed the workdir and trained a tokenizer in it."""
    for model_max_len in (512, None):
        with pytest.raises(DataError, match=message) as error:
            check_batch_shape(8, seq_len, model_max_len, objective)
        assert "\n" not in str(error.value)


def test_a_pretraining_run_is_refused_before_its_workdir_when_the_objectives_rows_are_too_long(tmp_path):
    """The loop checked seq_len alone; span corruption's longer decoder rows were refused only once
    the tokenizer had been trained into a new workdir."""
    from experiments.configs import pretrain
    from research.training import train_and_evaluate
    config = pretrain.get_config("t5_tiny")
    config.objective_options = {"noise_density": 0.6}
    config.train.seq_len, config.train.num_steps, config.opt.warmup_steps = 128, 2, 0
    with pytest.raises(DataError, match=r"^span_corruption at seq_len=128 packs decoder_inputs rows of 170 tokens"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
