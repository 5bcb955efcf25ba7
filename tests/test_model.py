from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffwave.config import load_config
from diffwave.errors import ConfigError
from diffwave.model import DiffWave
from diffwave.model.cpu_kernels import bf16_engine_available
from diffwave.model.diffwave import SpectrogramUpsampler, upsample_strides

TINY = dict(num_steps=10, residual_channels=4, residual_layers=3, dilation_cycle=2, n_mels=5, hop_length=6)


def tiny(**overrides: int | None) -> DiffWave:
    torch.manual_seed(0)
    return DiffWave(**{**TINY, **overrides})


def randomise_output(model: DiffWave) -> None:
    """The output projection starts at zero; give it weights so outputs and gradients are non-trivial."""
    with torch.no_grad():
        model.output_projection.weight.normal_()
        model.output_projection.bias.normal_()


def test_base_parameter_count_and_reference_names() -> None:
    model = DiffWave(num_steps=50)
    assert sum(p.numel() for p in model.parameters()) == 2_619_971
    state = model.state_dict()
    for name in [
        "input_projection.weight",
        "diffusion_embedding.projection1.weight",
        "diffusion_embedding.projection2.bias",
        "spectrogram_upsampler.conv1.weight",
        "spectrogram_upsampler.conv2.weight",
        "residual_layers.0.dilated_conv.weight",
        "residual_layers.29.diffusion_projection.weight",
        "residual_layers.29.conditioner_projection.weight",
        "residual_layers.29.output_projection.bias",
        "skip_projection.weight",
        "output_projection.bias",
    ]:
        assert name in state, name
    assert "diffusion_embedding.embedding" not in state
    assert model.diffusion_embedding.embedding.shape == (50, 128)
    assert "residual_layers.30.dilated_conv.weight" not in state
    assert model.residual_layers[9].dilated_conv.dilation == (512,)
    assert model.residual_layers[10].dilated_conv.dilation == (1,)
    assert model.spectrogram_upsampler.conv1.stride == (1, 16)


def test_embedding_table_matches_reference_formula() -> None:
    table = DiffWave(**TINY).diffusion_embedding.embedding
    step, dim = 7, 10
    angle = step * 10.0 ** (dim * 4.0 / 63.0)
    assert table[step, dim].item() == pytest.approx(math.sin(angle), abs=1e-5)
    assert table[step, 64 + dim].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_unconditional_output_shape_for_odd_length() -> None:
    model = tiny(n_mels=None)
    out = model(torch.randn(2, 1001), torch.tensor([0, 9]))
    assert out.shape == (2, 1001)


@pytest.mark.parametrize(("hop", "strides"), [(256, (16, 16)), (300, (15, 20)), (225, (15, 15)), (6, (2, 3))])
def test_upsampler_gives_frames_times_hop(hop: int, strides: tuple[int, int]) -> None:
    assert upsample_strides(hop) == strides
    upsampler = SpectrogramUpsampler(hop)
    out = upsampler(torch.randn(2, 3, 7))
    assert out.shape == (2, 3, 7 * hop)


def test_condition_shape_matches_audio_length() -> None:
    model = tiny()
    cond = model.condition(torch.randn(2, 5, 4))
    assert cond.shape == (2, 3, 8, 4 * 6)
    assert model(torch.randn(2, 24), torch.tensor([1, 2]), cond).shape == (2, 24)


@pytest.mark.parametrize("hop", [257, 2, 3, 1])
def test_hop_without_two_strides_raises(hop: int) -> None:
    with pytest.raises(ConfigError, match=str(hop)):
        DiffWave(**{**TINY, "hop_length": hop})


def test_output_is_exactly_zero_at_init() -> None:
    model = tiny()
    mel = torch.randn(2, 5, 3)
    out = model(torch.randn(2, 18), torch.tensor([3, 7]), model.condition(mel))
    assert torch.equal(out, torch.zeros(2, 18))


def test_cached_conditioning_equals_per_layer_computation() -> None:
    """The reference implementation's way, the paper's: every layer projects the upsampled mel on its own."""
    model = tiny()
    randomise_output(model)
    mel, x, t = torch.randn(2, 5, 4), torch.randn(2, 24), torch.tensor([0.5, 8.0])
    with torch.no_grad():
        cached = model(x, t, model.condition(mel))
        naive = model.reference_forward(x, t, mel=mel)
    assert cached.abs().max() > 1e-3
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=1e-5)


def test_fractional_step_interpolates_rows() -> None:
    embedding = tiny().diffusion_embedding
    rows = embedding.embedding
    torch.testing.assert_close(embedding.lookup(torch.tensor([2.25]))[0], 0.75 * rows[2] + 0.25 * rows[3])
    assert torch.equal(embedding.lookup(torch.tensor([2.0, 9.0])), embedding.lookup(torch.tensor([2, 9])))


def test_integer_float_steps_give_same_output_as_long_steps() -> None:
    model = tiny(n_mels=None)
    randomise_output(model)
    x = torch.randn(2, 30)
    assert torch.equal(model(x, torch.tensor([4.0, 0.0])), model(x, torch.tensor([4, 0])))


@pytest.mark.parametrize("t", [[-1], [10], [9.5], [-0.1], [float("nan")]])
def test_step_out_of_range_raises(t: list[float]) -> None:
    model = tiny(n_mels=None)
    with pytest.raises(ValueError, match="steps"):
        model(torch.randn(1, 12), torch.tensor(t))


def test_unconditional_model_has_no_conditioner() -> None:
    model = tiny(n_mels=None)
    names = {name for name, _ in model.named_parameters()}
    assert not any("conditioner_projection" in name or "spectrogram_upsampler" in name for name in names)
    assert model.condition(torch.randn(1, 5, 2)) is None
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 12), torch.tensor([1]), torch.zeros(1, 3, 8, 12))


def test_conditional_model_refuses_missing_or_misfit_cond() -> None:
    model = tiny()
    x, t = torch.randn(1, 24), torch.tensor([1])
    with pytest.raises(ValueError, match="condition"):
        model(x, t)
    with pytest.raises(ValueError, match="hop_length"):
        model(x, t, model.condition(torch.randn(1, 5, 3)))
    with pytest.raises(ValueError, match="mel"):
        model.condition(torch.randn(1, 6, 3))


def test_gradients_reach_every_parameter() -> None:
    model = tiny()
    randomise_output(model)
    mel = torch.randn(2, 5, 4)
    out = model(torch.randn(2, 24), torch.tensor([1.5, 6.0]), model.condition(mel))
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_from_config_presets() -> None:
    tiny_config = load_config("tiny")
    model = DiffWave.from_config(tiny_config)
    assert model.conditional and model.hop_length == tiny_config.audio.hop_length
    assert len(model.residual_layers) == tiny_config.model.residual_layers
    assert model.diffusion_embedding.embedding.shape[0] == tiny_config.diffusion.num_steps
    assert model.residual_layers[0].conditioner_projection.in_channels == tiny_config.audio.n_mels

    unconditional = DiffWave.from_config(load_config("unconditional"))
    assert not unconditional.conditional
    assert len(unconditional.residual_layers) == 36
    assert "residual_layers.0.conditioner_projection.weight" not in unconditional.state_dict()


def test_mask_makes_padded_batch_match_lone_utterances() -> None:
    model = tiny()
    randomise_output(model)
    short_mel, long_mel = torch.randn(1, 5, 3), torch.randn(1, 5, 5)
    short_x, long_x = torch.randn(1, 18), torch.randn(1, 30)
    t = torch.tensor([4.0, 4.0])
    # Padding with large values shows any leak; the conditioning is computed per utterance, as the vocoder does.
    x = torch.cat([F.pad(short_x, (0, 12), value=5.0), long_x])
    cond = torch.cat([F.pad(model.condition(short_mel), (0, 12), value=5.0), model.condition(long_mel)])
    mask = torch.arange(30) < torch.tensor([[18], [30]])
    with torch.no_grad():
        batched = model(x, t, cond, mask)
        alone = model(short_x, t[:1], model.condition(short_mel))
        unmasked = model(x, t, cond)
    torch.testing.assert_close(batched[0, :18], alone[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batched[1], model(long_x, t[:1], model.condition(long_mel))[0], atol=1e-6,
                               rtol=1e-6)
    assert (unmasked[0, :18] - alone[0]).abs().max() > 1e-3  # without the mask the padding leaks in
    with pytest.raises(ValueError, match="mask"):
        model(x, t, cond, mask.float())


@pytest.mark.parametrize("tile", [4096, 256], ids=["default-tile", "tile-narrower-than-dilation"])
@pytest.mark.parametrize("n_mels", [6, None])
@pytest.mark.parametrize("frames", [(2 * 4096 + 900) // 16, 20, 200], ids=["tiles", "shorter-than-dilation",
                                                                         "one-tile"])
def test_tiled_inference_forward_equals_the_whole_signal_forward(n_mels: int | None, frames: int, tile: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU inference runs tile by tile, time-major, with halos, updating the residual stream in place one tile
    behind; a layer whose dilation is wider than the tile length (512 > 256) takes tiles of its dilation.

    Row 0 is unmasked (its inner tiles read the residual stream directly), row 1 is masked (every tile builds
    its conv input), and the signal ends mid-tile; short signals (320 samples < the 512 dilation, and less
    than one tile) take only edge tiles.
    """
    from diffwave.model import cpu_kernels

    assert cpu_kernels.INFERENCE_TILE == 4096
    monkeypatch.setattr(cpu_kernels, "INFERENCE_TILE", tile)
    assert [cpu_kernels.tile_length(d) for d in (1, 256, 512)] == [tile, tile, max(tile, 512)]
    torch.manual_seed(0)
    model = DiffWave(num_steps=50, residual_channels=4, residual_layers=10, dilation_cycle=10, n_mels=n_mels,
                     hop_length=16)
    torch.nn.init.normal_(model.output_projection.weight)
    x = torch.randn(2, frames * 16)
    t = torch.tensor([3.0, 41.5])
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, -min(1000, x.shape[1] // 2):] = False
    mel = torch.randn(2, 6, frames)
    whole = model.reference_forward(x, t, model.condition(mel) if n_mels else None, mask)  # the paper's network
    with torch.no_grad():
        tiled = model(x, t, model.condition(mel) if n_mels else None, mask)
    assert torch.allclose(whole, tiled, atol=1e-5)
    assert not torch.equal(whole[0], whole[1])
    if n_mels:  # conditioning computed with grad (channel-major layout) feeding the tiled forward
        channel_major = model.condition(mel).detach()
        assert channel_major.is_contiguous()
        with torch.no_grad():
            mixed = model(x, t, channel_major, mask)
        assert torch.allclose(whole, mixed, atol=1e-5)


@pytest.mark.parametrize("block", [4096, 16], ids=["one-block", "blocks-with-a-ragged-end"])
def test_inference_conditioning_is_time_major_with_the_same_values(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without grad on a CPU, `condition` stores [B, L, N, 2C] (read tile by tile), or writes into `out`; it
    runs in blocks of samples (42 = 16 + 16 + 10 here), each layer's bias from a column of ones."""
    from diffwave.model import cpu_kernels

    assert cpu_kernels.CONDITIONING_BLOCK == 4096
    monkeypatch.setattr(cpu_kernels, "CONDITIONING_BLOCK", block)
    model = tiny()
    for layer in model.residual_layers:  # nonzero biases, so a missed bias row shows
        torch.nn.init.normal_(layer.conditioner_projection.bias)
    mel = torch.randn(2, 5, 7)
    trained = model.condition(mel)
    with torch.no_grad():
        inferred = model.condition(mel)
        buffer = torch.full((2, 3, 7 * 6 + 5, 8), float("nan")).transpose(2, 3)
        written = model.condition(mel, out=buffer[..., :7 * 6])
    assert inferred.shape == trained.shape and inferred.transpose(2, 3).is_contiguous()
    torch.testing.assert_close(inferred, trained, atol=1e-6, rtol=1e-6)
    assert written.data_ptr() == buffer.data_ptr() and torch.equal(written, inferred)


def test_the_fp32_engine_reads_fp16_conditioning_as_its_rounded_values() -> None:
    """Samplers keep fp32's conditioning in fp16 (`cpu_kernels.conditioning_storage`): `condition` stores the
    fp32 products rounded once, and the tiled forward computes what the paper's network computes on exactly
    those values (the products, activations and sums stay fp32)."""
    from diffwave.model.cpu_kernels import conditioning_view

    torch.manual_seed(0)
    model = DiffWave(num_steps=50, residual_channels=4, residual_layers=10, dilation_cycle=10, n_mels=6,
                     hop_length=16)
    torch.nn.init.normal_(model.output_projection.weight)
    frames = (2 * 4096 + 900) // 16  # several tiles and conditioning blocks, ending mid-tile
    mel, x, t = torch.randn(2, 6, frames), torch.randn(2, frames * 16), torch.tensor([3.0, 41.5])
    exact = model.condition(mel).detach()  # with grad: one stacked convolution, fp32
    with torch.no_grad():
        buffer = torch.empty(exact.numel(), dtype=torch.float16)
        stored = model.condition(mel, out=conditioning_view(buffer, 2, 10, 8, frames * 16))
        tiled = model(x, t, stored)
    assert stored.dtype == torch.float16 and stored.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(stored.float(), exact, atol=1e-6, rtol=2**-11)  # rounded once: half an ulp
    assert not torch.equal(stored.float(), exact)
    whole = model.reference_forward(x, t, stored.float())
    assert torch.allclose(whole, tiled, atol=1e-5)
    with torch.no_grad(), pytest.raises(ValueError, match="not torch.bfloat16"):  # bf16 holds another form
        model.condition(mel, out=conditioning_view(buffer.to(torch.bfloat16), 2, 10, 8, frames * 16))


def test_training_formulation_matches_the_stacked_conditioning_in_output_and_gradients() -> None:
    """`mel=` (each layer projects the upsampled mel) and `cond=condition(mel)` (one stacked projection) are
    the same function: same output and the same gradient for every parameter."""
    model = tiny()
    randomise_output(model)
    mel, x, t = torch.randn(2, 5, 4), torch.randn(2, 24), torch.tensor([0.5, 8.0])
    weights = torch.randn(2, 24)
    gradients = []
    for conditioning in ({"mel": mel}, {"cond": None}):
        model.zero_grad()
        if "cond" in conditioning:
            conditioning = {"cond": model.condition(mel)}
        out = model(x, t, **conditioning)
        (out * weights).sum().backward()
        gradients.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (out_mel, grads_mel), (out_stacked, grads_stacked) = gradients
    assert out_mel.abs().max() > 1e-3
    torch.testing.assert_close(out_mel, out_stacked, atol=1e-6, rtol=1e-5)
    assert grads_mel.keys() == grads_stacked.keys()
    for name in grads_mel:
        assert grads_mel[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_mel[name], grads_stacked[name], atol=1e-6, rtol=1e-5, msg=name)


def test_mel_and_cond_are_exclusive_and_mel_must_fit_the_audio() -> None:
    model = tiny()
    mel, x, t = torch.randn(1, 5, 4), torch.randn(1, 24), torch.tensor([1])
    with pytest.raises(ValueError, match="one of"):
        model(x, t, model.condition(mel), mel=mel)
    with pytest.raises(ValueError, match="hop_length"):
        model(x, t, mel=torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match="unconditional"):
        tiny(n_mels=None)(x, t, mel=mel)
    with torch.no_grad():  # inference with mel= takes the tiled path and gives the same values
        torch.testing.assert_close(model(x, t, mel=mel), model(x, t, model.condition(mel)))


@pytest.mark.skipif(not bf16_engine_available(), reason="oneDNN runs no bf16 convolution on this CPU")
@pytest.mark.parametrize("n_mels", [6, None])
def test_bf16_engine_differs_from_fp32_by_bf16_rounding_only(n_mels: int | None) -> None:
    """Under CPU autocast to bf16 the engine runs the stack in bf16: its error against fp32 is that of bf16
    operands and activations (2^-9 relative each), no larger than autocast's whole-signal loop makes it, and a
    masked row of a batch (dilations up to 512 reaching into its padding) rounds as the utterance alone does."""
    torch.manual_seed(0)
    model = DiffWave(num_steps=50, residual_channels=16, residual_layers=10, dilation_cycle=10, n_mels=n_mels,
                     hop_length=16)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    x, t, mel = torch.randn(2, 600 * 16), torch.tensor([3.0, 41.5]), torch.randn(2, 6, 600)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, -1000:] = False
    conditioned = (lambda: model.condition(mel)) if n_mels else (lambda: None)
    with torch.no_grad():
        reference = model(x, t, conditioned(), mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cond = conditioned()
            tiled = model(x, t, cond, mask)
            alone = model(x[1:, :-1000], t[1:], None if cond is None else cond[1:, ..., :-1000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = model(x, t, conditioned(), mask).detach()  # grad enabled: the whole-signal loop
    if n_mels:
        assert cond.dtype == torch.bfloat16 and cond.transpose(2, 3).is_contiguous()

    def error(out: torch.Tensor) -> float:
        return ((out.float() - reference).norm() / reference.norm()).item()

    assert 1e-4 < error(tiled) < 2e-2  # bf16 really ran, and nothing worse than its rounding
    assert error(tiled) < 1.5 * error(whole)
    # Row 1 masked in the batch against alone: the same bf16 rounding.
    torch.testing.assert_close(tiled[1, :-1000].float(), alone[0].float(), atol=1e-6, rtol=0)
