"""Predictor-corrector sampling (Langevin corrector) against closed forms and the exact score.

The data are Gaussian or a Gaussian mixture, whose optimal noise predictor (tests/analytic.py) gives the exact
score of every noisy marginal, score = -eps* / sqrt(1 - abar). Discretised Langevin with step e on N(m, v)
is x' = x - e (x - m) / v + sqrt(2 e) z, an AR(1) chain with stationary mean m and variance
w = 2e / (1 - (1 - e/v)^2) = v / (1 - e / (2v)): the corrector's only bias, in closed form. Song et al.'s step
rule e = 2 alpha (r ||z|| / ||score||)^2 with ||z||^2 ~ d and ||score||^2 ~ d w / v^2 (many dimensions, so the
norms concentrate) gives e = 2 alpha r^2 v^2 / w, and the two equations together give w = v (1 + alpha r^2).
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats

from diffwave.checkpoints import FORMAT_VERSION
from diffwave.cli import main
from diffwave.config import config_to_dict, load_config
from diffwave.diffusion import NoiseSchedule, ddim, fast_schedule, full_chain, sample
from diffwave.diffusion.sampling import CORRECTOR_SNR, langevin_step
from diffwave.errors import ScheduleError
from diffwave.inference import Vocoder
from diffwave.inference.generate import generate
from diffwave.model import DiffWave
from tests.analytic import GaussianMixture, gaussian
from tests.audio_fixtures import harmonic_tone

SCHEDULE = NoiseSchedule.linear(50, 1e-4, 0.05)  # BASE
PLANS = {"fast-base": lambda: fast_schedule(SCHEDULE, "base"), "ddim-4": lambda: ddim(SCHEDULE, 4),
         "ddpm": lambda: full_chain(SCHEDULE)}
MU, S = 0.3, 0.5  # Gaussian data N(MU, S^2)
MIXTURE = GaussianMixture((0.4, 0.6), (-0.5, 0.4), (0.15, 0.2))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the loop: K = 0 is today's sampler; which states, which steps, which noise -------------------------
@pytest.mark.parametrize("name", list(PLANS))
def test_zero_corrector_steps_is_the_plain_sampler_bit_for_bit(name):
    plan = PLANS[name]()
    eps_fn = gaussian(MU, S).eps_fn(SCHEDULE, 0.7)
    prior = 0.4 + torch.rand(3, 64, generator=seeded(0), dtype=torch.float64)
    mask = torch.arange(64) < torch.tensor([64, 40, 17])[:, None]
    options = {"dtype": torch.float64, "prior_std": prior, "mask": mask}
    plain = sample(plan, eps_fn, (3, 64), generator=seeded(1), **options)
    for snr in (CORRECTOR_SNR, 0.5):
        assert torch.equal(sample(plan, eps_fn, (3, 64), generator=seeded(1), corrector_steps=0, corrector_snr=snr,
                                  **options), plain)
    corrected = sample(plan, eps_fn, (3, 64), generator=seeded(1), corrector_steps=1, **options)
    assert not torch.equal(corrected, plain) and (corrected[~mask] == 0).all()


@pytest.mark.parametrize("name", ["fast-base", "ddim-4"])
def test_corrector_runs_at_the_state_each_step_lands_on_and_draws_its_own_noise(name):
    """Step i lands on state i - 1: the K corrector calls there get its model step, and its noise draws lie
    above len(plan), each once, apart from the predictor's draws 0..len(plan)."""
    plan, K = PLANS[name](), 3
    steps, draws = [], []

    def eps_fn(x, t):
        steps.append(t[0].item())
        return gaussian(MU, S).eps_fn(SCHEDULE)(x, t)

    def noise_fn(i):
        draws.append(i)
        return torch.randn(2, 16, generator=seeded(100 + i), dtype=torch.float64)

    sample(plan, eps_fn, (2, 16), noise_fn=noise_fn, dtype=torch.float64, corrector_steps=K)
    model_steps = plan.model_steps.float().tolist()  # t is float32
    expected = []
    for i in reversed(range(len(plan))):
        expected += [model_steps[i]] + [model_steps[i - 1]] * (K if i > 0 else 0)
    assert steps == expected
    predictor = [len(plan)] + [i for i in reversed(range(len(plan))) if plan.sigmas[i] > 0]
    corrector = [i for i in draws if i > len(plan)]
    assert [i for i in draws if i <= len(plan)] == predictor
    assert len(corrector) == K * (len(plan) - 1) == len(set(corrector))


def test_a_plan_whose_steps_skip_states_is_refused_for_correction():
    plan = PLANS["ddim-4"]()
    broken = dataclasses.replace(plan, alpha_bars_prev=plan.alpha_bars_prev * torch.tensor([1.0, 1.0, 0.99, 1.0],
                                                                                            dtype=torch.float64))
    eps_fn = gaussian(MU, S).eps_fn(SCHEDULE)
    sample(broken, eps_fn, (1, 8), generator=seeded(0))  # the plain sampler does not need it
    with pytest.raises(ScheduleError, match="does not land on state i - 1"):
        sample(broken, eps_fn, (1, 8), generator=seeded(0), corrector_steps=1)


@pytest.mark.parametrize(("options", "message"), [
    ({"corrector_steps": -1}, "corrector steps must be a whole number >= 0, got -1"),
    ({"corrector_steps": 1.5}, "corrector steps must be a whole number >= 0, got 1.5"),
    ({"corrector_steps": True}, "corrector steps must be a whole number >= 0, got True"),
    ({"corrector_steps": 1, "corrector_snr": 0.0}, "corrector snr must be a finite number > 0, got 0.0"),
    ({"corrector_steps": 1, "corrector_snr": -0.1}, "corrector snr must be a finite number > 0, got -0.1"),
    ({"corrector_steps": 1, "corrector_snr": float("nan")}, "corrector snr must be a finite number > 0, got nan"),
])
def test_bad_corrector_settings_are_refused(options, message):
    with pytest.raises(ScheduleError) as error:
        sample(PLANS["ddim-4"](), gaussian(MU, S).eps_fn(SCHEDULE), (1, 8), **options)
    assert str(error.value) == message


def test_each_row_is_corrected_on_its_own_and_on_its_real_samples_only():
    """Norms per example and over the mask: a row's output is the same alone, beside another row, and padded
    (its noise keyed by (row, draw) as the vocoder keys it by utterance); Song's batch-mean norms would fail."""
    plan = PLANS["fast-base"]()
    eps_fn = MIXTURE.eps_fn(SCHEDULE)
    rows = [torch.randn(100, 100, generator=seeded(row), dtype=torch.float64) for row in (1, 2)]  # [draw, sample]

    def noise_for(ids, width):
        return lambda i: torch.stack([rows[r][i, :width] for r in ids])

    run = lambda ids, width, mask=None: sample(plan, eps_fn, (len(ids), width), noise_fn=noise_for(ids, width),  # noqa: E731
                                               dtype=torch.float64, mask=mask, corrector_steps=4)
    alone = run([0], 60)
    together = run([1, 0], 60)
    padded = run([0, 1], 100, mask=torch.arange(100) < torch.tensor([60, 100])[:, None])
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded[:1, :60], alone, rtol=0, atol=1e-12)
    assert (padded[0, 60:] == 0).all()
    assert (together[0] - alone[0]).abs().max() > 0.1  # a different row is different


# --- Langevin at a fixed level with the exact score ----------------------------------------------------
ROWS, DIMS = 16, 4096  # many dimensions per row, so the per-row norms concentrate


def run_langevin(x, eps_fn, alpha_bar, alpha, snr, steps, seed, prior_std=None):
    """`steps` corrector steps at one level; returns the states after each step (kept on a stride of one)."""
    generator, states = seeded(seed), []
    for _ in range(steps):
        langevin_step(x, eps_fn(x), alpha_bar, alpha, snr, torch.randn(x.shape, generator=generator,
                                                                         dtype=x.dtype), prior_std)
        states.append(x.clone())
    return states


@pytest.mark.parametrize(("snr", "alpha"), [(0.5, 0.95), (0.16, 1.0)])
def test_langevin_keeps_the_exact_gaussian_marginal_up_to_its_closed_form_bias(snr, alpha):
    """From exact draws of p_t, the chain stays at mean sqrt(a) MU and variance v (1 + alpha r^2) (module doc):
    with r = 0.5 the bias is 24% and the factor 2, alpha and r^2 of Song's step are all checked within 0.5%."""
    a = 0.6
    v, m = a * S**2 + 1 - a, math.sqrt(a) * MU
    data = gaussian(MU, S)
    x = data.sample(ROWS * DIMS, a, seeded(0)).reshape(ROWS, DIMS)
    eps_fn = lambda x: data.optimal_eps(x, torch.full((ROWS,), a))  # noqa: E731
    states = torch.stack(run_langevin(x, eps_fn, a, alpha, snr, 300, seed=1)[100:])
    assert states.mean().item() == pytest.approx(m, abs=0.003)
    assert ((states - m) ** 2).mean().item() / v == pytest.approx(1 + alpha * snr**2, rel=0.005)


@pytest.mark.parametrize(("offset", "scale"), [(1.0, 2.0), (0.0, 0.5)])
def test_langevin_contracts_a_wrong_gaussian_toward_the_right_one(offset, scale):
    """Started a standard deviation off and twice as wide, or half as wide: mean and variance move toward the
    stationary law at every checkpoint until they are within sampling noise of it, and end there."""
    a, snr = 0.6, CORRECTOR_SNR
    v, m = a * S**2 + 1 - a, math.sqrt(a) * MU
    data = gaussian(MU, S)
    start = data.sample(ROWS * DIMS, a, seeded(2)).reshape(ROWS, DIMS)
    x = m + offset * math.sqrt(v) + scale * (start - m)
    states = run_langevin(x, lambda x: data.optimal_eps(x, torch.full((ROWS,), a)), a, 1.0, snr, 160, seed=3)
    target = v * (1 + snr**2)
    gaps = {"mean": [abs(s.mean().item() - m) / math.sqrt(v) for s in states[::20]],
            "variance": [abs(s.var().item() - target) / target for s in states[::20]]}
    assert gaps["variance"][0] > 0.4
    for name, gap in gaps.items():
        pairs = list(zip(gap, gap[1:], strict=False))
        assert all(later < earlier for earlier, later in pairs if earlier > 0.02), (name, gap)
        assert gap[-1] < 0.02, (name, gap)


def level_law(mixture: GaussianMixture, a: float) -> GaussianMixture:
    """The exact marginal p_t of the mixture at level a: each component N(sqrt(a) m, a s^2 + 1 - a)."""
    return GaussianMixture(mixture.weights, tuple(math.sqrt(a) * m for m in mixture.means),
                           tuple(math.sqrt(a * s**2 + 1 - a) for s in mixture.stds))


def ks(x: torch.Tensor, law: GaussianMixture) -> float:
    return stats.kstest(x.flatten().numpy(), lambda v: law.cdf(torch.as_tensor(v)).numpy()).statistic


def test_langevin_keeps_a_mixture_marginal_and_pulls_a_wrong_start_to_it():
    a, snr = 0.5, 0.1
    law = level_law(MIXTURE, a)
    w, means, stds = (torch.tensor(v, dtype=torch.float64) for v in (law.weights, law.means, law.stds))
    mean = (w * means).sum().item()
    var = (w * (stds**2 + means**2)).sum().item() - mean**2
    eps_fn = lambda x: MIXTURE.optimal_eps(x, torch.full((x.shape[0],), a))  # noqa: E731
    exact = MIXTURE.sample(ROWS * DIMS, a, seeded(4)).reshape(ROWS, DIMS)
    kept = run_langevin(exact.clone(), eps_fn, a, 1.0, snr, 100, seed=5)[-1]
    assert kept.mean().item() == pytest.approx(mean, abs=0.01)
    assert kept.var().item() == pytest.approx(var, rel=0.015)  # bias below alpha r^2 = 1%
    assert ks(kept, law) < 0.01
    wrong = mean + 1.6 * (exact - mean)
    assert ks(wrong, law) > 0.1
    pulled = run_langevin(wrong, eps_fn, a, 1.0, 0.2, 150, seed=6)[-1]
    assert ks(pulled, law) < 0.02


def test_preconditioned_langevin_keeps_the_marginal_under_a_priorgrad_prior():
    """Prior S_j per dimension: the marginal is N(sqrt(a) MU, V_j), V_j = a S^2 + (1 - a) S_j^2. The step on
    x is e S_j^2 on the score and sqrt(2e) S_j on the noise (Langevin in y = x / S), so each dimension's AR(1)
    fixed point is w_j = V_j / (1 - e S_j^2 / (2 V_j)), with e = 2 alpha r^2 d / sum_j (S_j^2 / V_j^2) w_j set by
    the norms in y; solved here by iteration. Unpreconditioned noise (z instead of S z) would miss it by far."""
    a, alpha, snr = 0.6, 0.95, 0.5
    prior = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64).repeat(DIMS // 4)  # 3 groups of 1024 dims
    d = prior.numel()
    V = a * S**2 + (1 - a) * prior**2
    ratio = torch.ones(d, dtype=torch.float64)  # w_j / V_j
    for _ in range(200):
        e = 2 * alpha * snr**2 * d / (prior**2 / V * ratio).sum()
        ratio = 1 / (1 - e * prior**2 / (2 * V))
    data = gaussian(MU, S)
    x = data.sample(ROWS, a, seeded(7), prior)
    eps_fn = lambda x: data.optimal_eps(x, torch.full((ROWS,), a), prior)  # noqa: E731
    states = torch.stack(run_langevin(x, eps_fn, a, alpha, snr, 300, seed=8, prior_std=prior)[100:])
    measured = ((states - math.sqrt(a) * MU) ** 2).mean(dim=(0, 1)) / V
    for group in range(3):
        predicted = ratio[group].item()
        assert predicted > 1.05  # a bias the check can see, different in each group
        assert measured[group::3].mean().item() == pytest.approx(predicted, rel=0.01), group
    assert states.mean().item() == pytest.approx(math.sqrt(a) * MU, abs=0.003)


# --- the whole chain: predictor-corrector against the predictor alone ---------------------------------
def chain(plan, corrector_steps: int, snr: float = CORRECTOR_SNR) -> torch.Tensor:
    return sample(plan, MIXTURE.eps_fn(SCHEDULE), (32, 1024), generator=seeded(0), dtype=torch.float64,
                  corrector_steps=corrector_steps, corrector_snr=snr)


TRUTH = level_law(MIXTURE, 1.0)


@pytest.mark.parametrize("plan", [ddim(SCHEDULE, 2), ddim(SCHEDULE, 3), fast_schedule(SCHEDULE, "base"),
                                  fast_schedule(SCHEDULE, [1e-3, 0.05, 0.5])], ids=lambda plan: plan.name)
def test_correction_never_worsens_coarse_samplers(plan):
    """The exact Langevin kernel at each level leaves p_t invariant, so it can only move the law toward p_t;
    at coarse steps (KS of the predictor alone 0.09-0.37) two default corrector steps never do worse."""
    alone = ks(chain(plan, 0), TRUTH)
    assert alone > 0.05  # coarse enough to leave room
    assert ks(chain(plan, 2), TRUTH) <= alone + 0.005  # KS noise at 32768 samples is about 0.005


def test_correction_restores_the_spread_of_each_mode_under_the_fast_schedule():
    """DiffWave's 6-step schedule with the exact predictor under-disperses each mode: its big ancestral steps
    pull every sample toward its posterior mean, so both modes come out narrow (right mode std 0.158 vs 0.188)
    while the mode weights stay nearly right. The corrector at the near-clean levels (abar 0.999 to 0.94) is
    Langevin inside one log-concave mode, which contracts toward that mode's spread at a rate of about
    e / v = 2 alpha r^2 per step (the Gaussian tests above); across modes, at these levels, it moves no mass.
    So five default steps per level cut the KS distance by far (0.090 -> 0.022 measured) and fix the right
    mode's spread (0.158 -> 0.181), while the weight of the right mode stays where the predictor put it."""
    plan = fast_schedule(SCHEDULE, "base")
    alone, corrected = chain(plan, 0), chain(plan, 5)
    assert ks(corrected, TRUTH) < 0.4 * ks(alone, TRUTH)
    truth = MIXTURE.sample(200_000, 1.0, seeded(9))
    spread = lambda x: x[x > 0].std().item()  # noqa: E731  (the right mode, N(0.4, 0.2^2), mostly)
    assert abs(spread(corrected) - spread(truth)) < 0.5 * abs(spread(alone) - spread(truth))
    weight = lambda x: (x > 0).double().mean().item()  # noqa: E731
    assert abs(weight(corrected) - weight(alone)) < 0.005  # no mass moved across modes


# --- the vocoder, the command line, generation --------------------------------------------------------
TINY = load_config("tiny")


def random_model(config=TINY, seed: int = 0) -> DiffWave:
    """An untrained tiny model whose output projection is not zero (zero would predict eps = 0: no score)."""
    torch.manual_seed(seed)
    model = DiffWave.from_config(config)
    torch.nn.init.normal_(model.output_projection.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    return Vocoder(random_model(), TINY, device="cpu", dtype="fp32")


def tone_mel(vocoder: Vocoder, seconds: float, seed: int = 0) -> torch.Tensor:
    rate = TINY.audio.sample_rate
    return vocoder.mel(harmonic_tone(rate, seconds, seed=seed), rate)


def test_vocode_with_a_corrector_is_deterministic_and_keeps_batch_independence(vocoder):
    long, short = tone_mel(vocoder, 0.5), tone_mel(vocoder, 0.3, seed=1)
    options = {"sampler": "ddim", "steps": 3, "corrector_steps": 2, "corrector_snr": 0.3}
    first = vocoder.vocode(long, generator=seeded(0), **options)
    assert torch.equal(first, vocoder.vocode(long, generator=seeded(0), **options))
    plain = vocoder.vocode(long, generator=seeded(0), sampler="ddim", steps=3)
    assert first.shape == plain.shape and (first - plain).abs().max() > 1e-3
    padded = torch.full((2, *long.shape), long.min().item())
    padded[0], padded[1, :, :short.shape[-1]] = long, short
    together = vocoder.vocode(padded, lengths=[long.shape[-1], short.shape[-1]], generator=seeded(0), **options)
    alone = vocoder.vocode(short, generator=seeded(0), **options)
    torch.testing.assert_close(together[1], alone, atol=1e-5, rtol=0)
    chunked = vocoder.vocode(long, generator=seeded(0), chunk_seconds=0.2, overlap_seconds=0.05, **options)
    assert chunked.shape == first.shape and torch.isfinite(chunked).all()


def test_vocode_refuses_bad_corrector_settings_before_any_work(vocoder):
    with pytest.raises(ScheduleError, match="corrector snr must be a finite number > 0"):
        vocoder.vocode(torch.zeros(3, 5), corrector_steps=1, corrector_snr=0)  # a bad mel too: not reached


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    weights = random_model().state_dict()
    path = tmp_path_factory.mktemp("corrector") / "random.pt"
    torch.save({"format_version": FORMAT_VERSION, "config": config_to_dict(TINY), "step": 1, "model": weights,
                "ema": weights}, path)
    return path


def test_cli_corrector_options_reach_the_sampler(checkpoint, vocoder, tmp_path, capsys):
    mel = tone_mel(vocoder, 0.4)
    np.save(tmp_path / "utt.npy", mel.numpy())
    common = [str(tmp_path / "utt.npy"), "--checkpoint", str(checkpoint), "--device", "cpu", "--dtype", "fp32",
              "--sampler", "ddim", "--steps", "3"]
    assert main(["vocode", *common, "-o", str(tmp_path / "pc.wav"), "--corrector-steps", "2",
                 "--corrector-snr", "0.3"]) == 0
    assert main(["vocode", *common, "-o", str(tmp_path / "plain.wav")]) == 0
    corrected, _ = sf.read(tmp_path / "pc.wav")
    plain, _ = sf.read(tmp_path / "plain.wav")
    api = vocoder.vocode(mel, sampler="ddim", steps=3, generator=seeded(0), corrector_steps=2, corrector_snr=0.3)
    np.testing.assert_allclose(corrected, api.numpy(), atol=1.5 / 32768, rtol=0)  # PCM_16 rounding
    assert np.abs(corrected - plain).max() > 1e-3
    capsys.readouterr()
    assert main(["vocode", *common, "-o", str(tmp_path / "bad.wav"), "--corrector-steps", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "diffwave: error: corrector steps must be a whole number >= 0, got -1"


def test_generate_passes_the_corrector_on():
    config = load_config("tiny", ["model.conditional=false"])
    model = random_model(config)
    run = lambda k: generate(model, config, 2, 0.05, sampler="ddim", steps=3, generator=seeded(0),  # noqa: E731
                             corrector_steps=k)
    corrected = run(2)
    assert all(torch.equal(a, b) for a, b in zip(corrected, run(2), strict=True))
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(corrected, run(0), strict=True))
