"""The MFU denominator: datasheet dense bf16 peaks by device kind, an override, and a
measured (labelled) peak on devices the table does not know."""
import types

import jax
import pytest

from research.training.peak_flops import datasheet_peak, peak_flops


@pytest.mark.parametrize("kind, name, flops", [
    ("TPU v4", "TPU v4", 275e12), ("TPU v5 lite", "TPU v5e", 197e12), ("TPU v5", "TPU v5p", 459e12),
    ("TPU v5p", "TPU v5p", 459e12), ("TPU v6 lite", "TPU v6e (Trillium)", 918e12),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100", 312e12), ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", "NVIDIA H200", 989e12),
    ("NVIDIA B200", "NVIDIA B200", 2250e12),
    # Matched by whole words: a substring gave GH200 the H200's name and the H200 NVL the SXM's peak.
    ("NVIDIA GH200 480GB", "NVIDIA GH200", 989e12), ("NVIDIA H200 NVL", "NVIDIA H200 NVL", 835e12),
    ("NVIDIA GB200", "NVIDIA GB200", 2500e12),
])
def test_datasheet_lookup_by_device_kind(kind, name, flops):
    assert datasheet_peak(kind) == (name, flops)


def test_a_kind_that_only_contains_a_key_is_not_that_chip():
    assert datasheet_peak("NVIDIA RTX A1000 6GB Laptop GPU") is None  # was "NVIDIA A100", 312e12


def test_devices_sum_override_wins_and_cpu_is_measured_and_labelled():
    h200 = [types.SimpleNamespace(device_kind="NVIDIA H200", platform="gpu")] * 8
    peak = peak_flops(h200)
    assert peak.flops_per_second == 8 * 989e12 and "datasheet bf16 dense: NVIDIA H200 x 8" == peak.source
    assert peak_flops(h200, override=1e15).flops_per_second == 1e15
    cpu = peak_flops(jax.devices()[:1])
    assert datasheet_peak(jax.devices()[0].device_kind) is None
    assert cpu.flops_per_second > 1e8 and "measured float32 matmul on cpu" in cpu.source


def test_a_measured_peak_is_measured_once_per_process_and_device_set(monkeypatch):
    from research.training import metrics, peak_flops as peak_flops_module

    calls = []
    monkeypatch.setattr(peak_flops_module, "_MEASURED", {})
    monkeypatch.setattr(metrics, "measure_peak_flops", lambda devices: calls.append(tuple(devices)) or 5e9)
    one, two = jax.devices()[:1], jax.devices()[:2]
    assert peak_flops(one).flops_per_second == peak_flops(one).flops_per_second == 5e9
    assert peak_flops(two).flops_per_second == 5e9
    assert calls == [tuple(one), tuple(two)]  # the second call for `one` reused its figure


def test_the_measured_peak_counts_the_flops_of_the_timed_matmuls(monkeypatch):
    """Each timed call runs two chained [size, size] products on every CPU device: with a clock
    that advances 1 s per reading, the peak is 2 products x devices x 2 size^3 FLOPs per second."""
    import itertools
    import types

    from research.training import metrics

    clock = itertools.count()
    # metrics' own clock only (its module attribute), not the time module everything else reads.
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    devices = jax.devices()[:2]
    assert metrics.measure_peak_flops(devices, size=64, repeats=2) == 2 * 2 * 2 * 64**3
