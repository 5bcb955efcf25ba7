"""The CPU inference engines' op budget, which holds on any CPU (with or without bf16 matrix units): how many
aten ops and dtype conversions one reverse step costs per residual layer."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffwave.model import DiffWave, cpu_kernels
from diffwave.model.cpu_kernels import (
    LayerWorkload,
    bf16_engine_available,
    conditioning_storage,
    empty_conditioning,
    prepared_weights,
)

LAYERS = 10


class Conversions(TorchDispatchMode):
    """Counts the aten calls that change a floating tensor's dtype: a `.to`, a copy between dtypes, or an op
    whose floating inputs and outputs (out= included) are not all of one dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in (*args, *(kwargs or {}).values(), *(out if isinstance(out, tuple | list) else [out]))
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if len({t.dtype for t in tensors}) > 1:
            self.calls[str(func)] += 1
        return out


def bf16_model(n_mels: int | None) -> tuple[DiffWave, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    model = DiffWave(num_steps=50, residual_channels=16, residual_layers=LAYERS, dilation_cycle=5, n_mels=n_mels,
                     hop_length=16).eval()
    x, t = torch.randn(1, 100 * 16), torch.tensor([7.0])  # one tile: per layer per step = per layer per tile
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.condition(torch.randn(1, n_mels, 100)) if n_mels else None  # once per utterance
    return model, x, t, cond


@pytest.mark.skipif(not bf16_engine_available(), reason="oneDNN runs no bf16 convolution on this CPU")
@pytest.mark.parametrize("n_mels", [6, None])
def test_bf16_step_converts_at_most_once_per_layer_and_its_weights_once(n_mels: int | None) -> None:
    model, x, t, cond = bf16_model(n_mels)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, t, cond)  # the first step prepares the weights
        weights = prepared_weights(model.residual_layers, torch.bfloat16)
        with Conversions() as seen:
            model(x, t, cond)
    assert prepared_weights(model.residual_layers, torch.bfloat16) is weights  # converted once, not per step
    # One step: z_0 = h + s_0 into the bf16 stream, the step constants into the weights' constant row, the skip
    # sum out: three conversions for the whole stack, nothing per layer (the budget is one per layer).
    assert sum(seen.calls.values()) <= 3, seen.calls
    assert sum(seen.calls.values()) <= LAYERS


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not bf16_engine_available(), reason="oneDNN runs no bf16 convolution on this CPU"))])
def test_aten_ops_per_layer_per_step(dtype: torch.dtype) -> None:
    """The profiler's count of the aten calls that pass over activations, per layer of one step (one tile): a
    budget that fails when a pass is added."""
    model, x, t, cond = bf16_model(6)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.inference_mode(), autocast:
        if dtype == torch.float32:  # kept as samplers keep it on a CPU: fp16 (`conditioning_storage`)
            storage = empty_conditioning(1, LAYERS, 32, 100 * 16, conditioning_storage(dtype))
            cond = model.condition(torch.randn(1, 6, 100), out=storage)
            assert cond.dtype == torch.float16
        model(x, t, cond)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model(x, t, cond)
    counts = collections.Counter(event.key for event in profile.key_averages() for _ in range(event.count))
    heavy = {"aten::addmm", "aten::addmm_", "aten::mm", "aten::sigmoid_", "aten::addcmul", "aten::copy_",
             "aten::add", "aten::add_", "aten::_to_copy", "aten::masked_fill_", "mkldnn::_convolution_pointwise_"}
    per_layer = sum(count for name, count in counts.items() if name in heavy) / LAYERS
    # bf16 per layer: the conditioning copied into the conv's output, the conv (reading the stream, adding in
    # place), sigmoid, gate, the residual and skip GEMMs: 6, plus the step's own few ops over 10 layers
    # (measured 10.4; 12.4 with an im2col copy and one conv GEMM).
    # fp32: the fp16 conditioning widened by a copy, then scaled and biased, three tap GEMMs (the step folded
    # into the bias), sigmoid, gate, two output GEMMs, edge tiles (measured 29.2; 28.3 from an fp32 cache).
    assert per_layer <= (11 if dtype == torch.bfloat16 else 30), counts


def test_without_onednn_bf16_cpu_bf16_takes_the_whole_signal_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN runs no bf16 convolution (AVX2-only CPUs), bf16 under CPU autocast runs the whole-signal
    loop (model/gated_layer.py) with its conditioning, and `auto`'s calibration times that path."""
    monkeypatch.setattr(cpu_kernels, "bf16_engine_available", lambda: False)
    model, x, t, _ = bf16_model(6)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)  # zero at initialisation
    mel = torch.randn(1, 6, 100)
    with torch.inference_mode():
        reference = model(x, t, mel=mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cond = model.condition(mel)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                out = model(x, t, cond)
    names = {event.key for event in profile.key_averages()}
    assert "GatedLayer" in names and "mkldnn::_convolution_pointwise_" not in names  # not the engine
    assert cond.shape == (1, LAYERS, 32, 100 * 16) and cond.is_contiguous()  # the stacked, channel-major form
    assert 1e-4 < ((out.float() - reference).norm() / reference.norm()).item() < 2e-2  # bf16 ran
    workload = LayerWorkload(8, n_mels=6)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        workload(torch.bfloat16)
    names = {event.key for event in profile.key_averages()}
    assert "GatedLayer" in names and "mkldnn::_convolution_pointwise_" not in names
