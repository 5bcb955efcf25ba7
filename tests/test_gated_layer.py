"""The fused residual layer (model/gated_layer.py) against the paper's network in plain autograd ops
(DiffWave.reference_forward)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffwave.config import load_config
from diffwave.errors import ConfigError
from diffwave.model import DiffWave, gated_layer

SHAPE = dict(num_steps=10, residual_channels=4, residual_layers=4, dilation_cycle=3, hop_length=6)  # dilations 1 2 4 1


def budget_mb(recomputed: int, stream: tuple[int, int], dtype: torch.dtype) -> float:
    """The activation_memory_mb at which exactly `recomputed` layers recompute, for audio of shape `stream`:
    each layer keeps 3 tensors of the residual stream's size, or 1."""
    size = stream[0] * SHAPE["residual_channels"] * stream[1] * dtype.itemsize
    return (3 * SHAPE["residual_layers"] - 2 * recomputed) * size / 2**20


def model_with_live_output(n_mels: int | None, memory_mb: float | None = None) -> DiffWave:
    torch.manual_seed(0)
    model = DiffWave(**SHAPE, n_mels=n_mels, activation_memory_mb=memory_mb).double()
    torch.nn.init.normal_(model.output_projection.weight)  # zero at init: outputs and gradients would be trivial
    return model


def outputs_and_gradients(model: DiffWave, forward, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The output, and the gradient of a fixed random projection of it for every parameter and input it uses."""
    model.zero_grad()
    inputs = {name: value.detach().requires_grad_(value.is_floating_point()) for name, value in inputs.items()}
    out = forward(**inputs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads |= {f"input {name}": value.grad for name, value in inputs.items() if value.is_floating_point()}
    return out.detach(), grads


CASES = {
    "mel": (5, lambda mel, cond: {"mel": mel}),
    "unconditional": (None, lambda mel, cond: {}),
    "stacked conditioning": (5, lambda mel, cond: {"cond": cond}),
}


@pytest.mark.parametrize("matmuls", [True, False], ids=["taps as matmuls", "convolution"])
@pytest.mark.parametrize("recomputed", [0, 2, 4])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("case", CASES)
def test_output_and_every_gradient_equal_the_plain_autograd_network(case: str, masked: bool, recomputed: int,
                                                                    matmuls: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """In float64, so that any difference beyond rounding is a wrong formula; every parameter, the audio, the mel
    or the conditioning all get the same gradient, whichever layers recompute their gate, with the dilated conv
    as the CPU's matrix products or as the convolution other devices run."""
    monkeypatch.setattr(gated_layer, "taps_as_matmuls", lambda padded: matmuls)
    n_mels, conditioning = CASES[case]
    model = model_with_live_output(n_mels, budget_mb(recomputed, (2, 30), torch.float64))
    assert model.recomputed_layers(torch.empty(2, 4, 30, dtype=torch.float64)) == recomputed
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, generator=generator, dtype=torch.float64)
    mel = torch.randn(2, 5, 5, generator=generator, dtype=torch.float64)
    cond = torch.randn(2, 4, 8, 30, generator=generator, dtype=torch.float64)
    inputs = {"x": x, "t": torch.tensor([0.5, 8.0], dtype=torch.float64), **conditioning(mel, cond)}
    if masked:
        inputs["mask"] = torch.arange(30) < torch.tensor([[19], [30]])
    fused, fused_grads = outputs_and_gradients(model, model, inputs)
    plain, plain_grads = outputs_and_gradients(model, model.reference_forward, inputs)
    assert plain.abs().max() > 1e-2
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        if not name.startswith("input"):
            assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    if masked:  # the padded audio reaches no output: every conv input is zero there
        assert fused_grads["input x"][0, 19:].abs().max() == 0


def test_float32_matches_the_plain_network_to_rounding() -> None:
    model = model_with_live_output(5, budget_mb(2, (2, 30), torch.float32)).float()
    generator = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(2, 30, generator=generator), "t": torch.tensor([3, 9]),
              "mel": torch.randn(2, 5, 5, generator=generator)}
    fused, fused_grads = outputs_and_gradients(model, model, inputs)
    plain, plain_grads = outputs_and_gradients(model, model.reference_forward, inputs)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_under_autocast_it_runs_in_the_autocast_dtype_and_is_as_close_to_fp32_as_the_plain_network() -> None:
    """Autocast does not reach into an autograd function's backward; the layer casts as autocast would, so bf16
    training on a CPU (and fp16/bf16 on a GPU) works, and its values are as near fp32's as plain autocast's."""
    model = model_with_live_output(5, budget_mb(2, (2, 30), torch.bfloat16)).float()
    generator = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(2, 30, generator=generator), "t": torch.tensor([3, 9]),
              "mel": torch.randn(2, 5, 5, generator=generator)}
    exact, exact_grads = outputs_and_gradients(model, model.reference_forward, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, fused_grads = outputs_and_gradients(model, model, inputs)
        plain, plain_grads = outputs_and_gradients(model, model.reference_forward, inputs)

    def error(value: Tensor, name: str | None = None) -> float:
        reference = exact if name is None else exact_grads[name]
        return float((value.float() - reference).norm() / reference.norm())

    assert fused.dtype == plain.dtype == torch.bfloat16
    assert 0 < error(fused) < 1.5 * error(plain) and error(plain) < 0.01
    for name, grad in plain_grads.items():  # a bf16 output's gradient is far from fp32's in either formulation
        assert fused_grads[name].dtype == grad.dtype, name
        assert error(fused_grads[name], name) < 1.5 * error(grad, name) + 0.01, name


def saved_bytes(forward) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of `forward()`, parameters excluded."""
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


@pytest.mark.parametrize("n_mels", [5, None])
def test_each_layer_keeps_three_activations_or_one_when_it_recomputes(n_mels: int | None) -> None:
    """Plain autograd keeps 4 [B, C, N] tensors per layer (conv input, sigmoid, tanh, product); the fused layer
    keeps 3 (conv input, sigmoid, tanh), and 1 (the conv input) in the layers that recompute their gate. Its conv
    input is kept with the dilation's zero columns on each side (the taps are slices of it)."""
    x, t, mel = torch.randn(2, 600), torch.tensor([1, 2]), torch.randn(2, 5, 100)
    conditioning = {"mel": mel} if n_mels else {}
    unit = x.numel() * SHAPE["residual_channels"] * x.element_size()
    layers = SHAPE["residual_layers"]
    padding = sum(2 * 2 ** (i % SHAPE["dilation_cycle"]) for i in range(layers)) * 2 * SHAPE["residual_channels"] * 4
    plain_model = model_with_live_output(n_mels).float()
    plain = saved_bytes(lambda: plain_model.reference_forward(x, t, **conditioning))
    for recomputed in range(layers + 1):
        model = model_with_live_output(n_mels, budget_mb(recomputed, (2, 600), torch.float32)).float()
        fused = saved_bytes(lambda: model(x, t, **conditioning))  # noqa: B023 (called at once)
        assert plain - fused == layers * unit + 2 * recomputed * unit - padding


def test_the_default_budget_recomputes_only_what_base_at_batch_16_needs() -> None:
    """BASE keeps 3 x 30 tensors of [batch, 64, 62 x 256] floats: 1,395 MiB at batch 4, 5,580 MiB at batch 16;
    (5,580 - 3,900) / (2 x 62) = 13.5, so 14 layers recompute there and none at batch 4."""
    model = DiffWave.from_config(load_config("base"))
    assert model.activation_memory_mb == 3900
    assert [model.recomputed_layers(torch.empty(batch, 64, 62 * 256)) for batch in (4, 16, 64)] == [0, 14, 30]
    with torch.no_grad():  # inference keeps nothing for a backward
        assert model.recomputed_layers(torch.empty(16, 64, 62 * 256)) == 0
    assert DiffWave.from_config(load_config("base", ["train.activation_memory_mb=null"])).recomputed_layers(
        torch.empty(64, 64, 62 * 256)) == 0
    with pytest.raises(ConfigError, match="activation_memory_mb"):
        load_config("tiny", ["train.activation_memory_mb=0"])
