"""Peak FLOP/s for MFU: the published dense bf16 peak of the accelerator, as the field reports.

MFU = achieved model FLOP/s / peak FLOP/s (Chowdhery et al. 2022). Papers and MaxText
divide by the data sheet's dense (no 2:4 sparsity) bf16 matmul peak per chip; so does
this module, looked up from `jax.Device.device_kind`. An explicit value (config
train.peak_flops) overrides the table. Devices not in the table (CPUs, unknown chips) get
a measured matmul peak, labelled as measured: it is a practical ceiling of this machine,
not a datasheet number, and MFU against it is not comparable with published figures.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import jax

# Dense bf16 tensor-core / MXU peak per chip, FLOP/s, from the vendors' data sheets.
# Ordered most specific first: the first key found in device_kind (lower case) as whole words
# wins (a substring matched "a100" in "RTX A1000" and "h200" in "GH200" and "H200 NVL").
DATASHEET_BF16_PEAK: tuple[tuple[str, str, float], ...] = (
    ("tpu v6", "TPU v6e (Trillium)", 918e12),
    ("tpu v5 lite", "TPU v5e", 197e12),
    ("tpu v5e", "TPU v5e", 197e12),
    ("tpu v5p", "TPU v5p", 459e12),
    ("tpu v5", "TPU v5p", 459e12),  # jax names v5p "TPU v5"
    ("tpu v4", "TPU v4", 275e12),
    ("gb200", "NVIDIA GB200", 2500e12),  # per Blackwell GPU of a GB200 (NVL72 data sheet: 180 PFLOP/s / 72)
    ("b200", "NVIDIA B200", 2250e12),
    ("gh200", "NVIDIA GH200", 989e12),
    ("h200 nvl", "NVIDIA H200 NVL", 835e12),
    ("h200", "NVIDIA H200", 989e12),
    ("h100 pcie", "NVIDIA H100 PCIe", 756e12),
    ("h100 nvl", "NVIDIA H100 NVL", 835e12),
    ("h100", "NVIDIA H100 SXM", 989e12),
    ("a100", "NVIDIA A100", 312e12),
)


@dataclasses.dataclass(frozen=True)
class PeakFlops:
    """flops_per_second of all the devices together, and where the figure comes from."""

    flops_per_second: float
    source: str  # "datasheet bf16 dense: NVIDIA H100 SXM x 8", "override", "measured float32 matmul on cpu x 8"


def datasheet_peak(device_kind: str) -> tuple[str, float] | None:
    """(chip name, dense bf16 FLOP/s per chip) for a jax device_kind, or None if unknown."""
    kind = device_kind.lower()
    for key, name, flops in DATASHEET_BF16_PEAK:
        if re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", kind):
            return name, flops
    return None


# Measured peaks by device tuple, once per process: the measurement is ~2e11 FLOPs on 8 fake
# CPU devices (1.4 s on 2 cores; 2.9 s before metrics.measure_peak_flops was trimmed, of a 41 s
# preset run), and a process that trains many models
# (a test worker, a notebook, train_together's callers) would otherwise pay it for every run.
# A machine's matmul rate does not change between runs; MFU is a logged figure, never a loss.
_MEASURED: dict[tuple, float] = {}


def _measured_peak(devices: tuple) -> float:
    if devices not in _MEASURED:
        from research.training.metrics import measure_peak_flops  # lazy: metrics imports the training stack

        _MEASURED[devices] = measure_peak_flops(list(devices))
    return _MEASURED[devices]


def peak_flops(devices: Sequence[jax.Device] | None = None, *, override: float = 0.0) -> PeakFlops:
    """The MFU denominator for `devices` (default: all): override > data sheet > measured."""
    devices = list(jax.devices() if devices is None else devices)
    known = datasheet_peak(devices[0].device_kind)
    if override:
        peak = PeakFlops(float(override), "override (train.peak_flops)")
    elif known is not None and all(d.device_kind == devices[0].device_kind for d in devices):
        name, per_chip = known
        peak = PeakFlops(per_chip * len(devices), f"datasheet bf16 dense: {name} x {len(devices)}")
    else:
        peak = PeakFlops(_measured_peak(tuple(devices)),
                         f"measured float32 matmul on {devices[0].platform} ({devices[0].device_kind}) x "
                         f"{len(devices)}, not a datasheet peak")
    logging.getLogger(__name__).info("MFU peak %.4g FLOP/s: %s", peak.flops_per_second, peak.source)
    return peak
