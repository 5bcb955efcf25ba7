"""The training settings do what their values say: EMA decay, learning-rate warm-up, gradient clipping, and
validation on the EMA weights. Each is checked against an independent computation, not against the trainer."""

import pytest
import torch

from diffwave.config import load_config
from diffwave.training.distributed import init_distributed
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer

QUIET = ["train.log_every=1", "train.valid_every=100000", "train.sample_every=100000", "train.save_every=100000"]


def make_trainer(features, run_dir, *overrides: str) -> Trainer:
    config = load_config("tiny", [*QUIET, *overrides])
    return Trainer.from_config(config, features, run_dir, init_distributed("cpu"),
                               resume_from=prepare_run_dir(run_dir, resume=False, overwrite=False))


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_ema_follows_its_formula(tiny_features, tmp_path):
    """ema_1 = theta_1 (AveragedModel starts from the first update), then ema_k = d_k ema_(k-1) + (1 - d_k) theta_k
    with d_k = min(decay, k / (9 + k)): the warm-up regime for k < 9 and the cap (0.5) from k = 9 on."""
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.ema_decay=0.5", "train.max_steps=12")
    weights = []
    trainer.fit(on_step=lambda t: weights.append(parameters(t.model)))
    expected = weights[0]
    for k, theta in enumerate(weights[1:], start=2):
        decay = min(0.5, k / (9 + k))
        expected = {name: decay * expected[name] + (1 - decay) * theta[name] for name in theta}
    ema = parameters(trainer.ema.module)
    assert not torch.equal(ema["output_projection.weight"], weights[-1]["output_projection.weight"])
    for name, value in expected.items():
        torch.testing.assert_close(ema[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_warm_up_sets_the_learning_rate_of_each_step(tiny_features, tmp_path):
    """Step i (1-based) runs at lr * min(1, i / warmup). Adam's first update is lr * sign(grad) wherever the
    gradient is well above eps, so the first step's applied change shows the rate as well as the optimizer's
    setting does."""
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.learning_rate=0.001", "train.warmup_steps=4",
                           "train.max_steps=6")
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    before = parameters(trainer.model)
    first_step = {}
    trainer.fit(on_step=lambda t: t.step == 1 and first_step.update(parameters(t.model)))
    assert rates == pytest.approx([0.00025, 0.0005, 0.00075, 0.001, 0.001, 0.001], rel=1e-12)
    # At step 1 only the output projection has gradients (it starts at zero, so nothing behind it does).
    change = (first_step["output_projection.weight"] - before["output_projection.weight"]).abs()
    torch.testing.assert_close(change, torch.full_like(change, 0.00025), rtol=1e-3, atol=0)


def test_gradient_clipping_bounds_the_applied_norm(tiny_features, tmp_path):
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.grad_clip_norm=0.01", "train.max_steps=5")
    applied = []

    def record(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        applied.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record)
    reported = []
    original = trainer._train_step
    trainer._train_step = lambda batch: reported.append(original(batch)) or reported[-1]
    trainer.fit()
    assert len(applied) == 5
    assert all(norm <= 0.01 * (1 + 1e-5) for norm in applied), applied
    # The logged norm is the one before clipping; it was far above the bound, so clipping did the work.
    assert all(outcome[1] > 0.05 for outcome in reported)
    assert applied == pytest.approx([0.01] * 5, rel=1e-5)


def test_validation_loss_and_samples_use_only_the_ema_weights(tiny_features, tmp_path):
    """Changing the raw weights changes neither valid/loss nor the vocoded samples; changing the EMA weights
    changes both."""
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=3", "train.num_samples=1")
    trainer.fit()

    class NoMonitor:
        def audio(self, *args) -> None: ...

        def mel_image(self, *args) -> None: ...

    def measure() -> tuple[float, float]:
        return trainer.validation_loss(), trainer.vocode_samples(NoMonitor())

    baseline = measure()
    with torch.no_grad():
        for value in trainer.model.parameters():
            value.mul_(-3.0)
    assert measure() == baseline
    with torch.no_grad():
        trainer.ema.module.output_projection.weight.normal_()
    changed = measure()
    assert changed[0] != baseline[0] and changed[1] != baseline[1]
