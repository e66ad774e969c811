"""The training loop on a tiny torch model: it learns, resumes bit-exactly, stops cleanly, and
refuses to step on a non-finite loss."""

import copy

import pytest
import torch
from torch import nn

from comfyui_lora_lab.training import objective
from comfyui_lora_lab.training.loop import LoopConfig, NonFiniteLoss, Outcome, Sample, Trainer
from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig
from comfyui_lora_lab.training.objective import SnrWeighting
from comfyui_lora_lab.training.optimizers import build_optimizer
from comfyui_lora_lab.training.schedulers import build_scheduler

SIGMA_TABLE = torch.linspace(0.03, 14.6, 1000)


class TinyPredictor:
    """A frozen pointwise (1x1 conv) model standing in for ComfyUI's MODEL."""

    def __init__(self, family, seed=0):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.SiLU(), nn.Conv2d(16, 4, 1))
        self.model.requires_grad_(False)
        self.family = family
        self.sigma_table = SIGMA_TABLE
        self.device = torch.device("cpu")
        self.calls = 0

    def predict(self, noisy, sigma, conds):
        self.calls += 1
        return self.model(noisy)

    def targets(self):
        return {"lora_in": self.model[0], "lora_out": self.model[2]}


def latent(seed, shape=(4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def params_of(network):
    return [p.detach().clone() for p in network.parameters()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class Run:
    """A predictor, an attached LoRA network, an optimizer and a scheduler, ready for a Trainer."""

    def __init__(self, family=None, samples=None, config=None, network_seed=0, dropout=0.0, lr=3e-2,
                 scheduler="cosine", warmup=0):
        self.predictor = TinyPredictor(family or objective.Flow())
        self.network = AdapterNetwork(self.predictor.targets(),
                                      NetworkConfig(rank=4, alpha=4.0, dropout=dropout), seed=network_seed)
        self.network.attach()
        self.config = config or LoopConfig(steps=10)
        self.samples = samples if samples is not None else [Sample(latent(1))]
        self.optimizer = build_optimizer("AdamW", [{"params": list(self.network.parameters()), "lr": lr}], lr)
        self.scheduler = build_scheduler(scheduler, self.optimizer, self.config.steps, warmup)
        self.trainer = Trainer(self.predictor, list(self.network.parameters()), self.samples, self.config,
                               self.optimizer, self.scheduler, self.network)
        self.records = []

    def run(self, start_step=0, should_stop=lambda: False):
        return self.trainer.run(start_step, self.records.append, should_stop)

    @property
    def losses(self):
        return [r.loss for r in self.records]


# --- learning -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [objective.Flow(), objective.Eps()], ids=["flow", "eps"])
def test_training_on_one_latent_lowers_the_loss(family):
    run = Run(family, config=LoopConfig(steps=60, seed=3), lr=3e-2, scheduler="constant")
    with torch.no_grad():  # a base far off the target: the adapter has something to correct
        run.predictor.model[2].weight.mul_(8.0)
    before = params_of(run.network)
    outcome = run.run()
    assert outcome == Outcome(60, interrupted=False)
    assert [r.step for r in run.records] == list(range(1, 61))
    first, last = run.losses[:5], run.losses[-5:]
    assert sum(last) / 5 < 0.8 * sum(first) / 5, (first, last)
    assert not same(before, params_of(run.network))


def test_records_carry_the_lr_used_and_the_sigma_of_each_step():
    run = Run(config=LoopConfig(steps=6), scheduler="constant_with_warmup", warmup=2)
    run.run()
    # linear warmup over 2 steps from 0: the lr each step was taken with
    assert [r.lr for r in run.records] == pytest.approx([0.0, 0.015, 0.03, 0.03, 0.03, 0.03])
    assert all(0.0 < r.sigma < 1.0 for r in run.records)  # flow: σ = t in (0, 1)
    assert len({r.sigma for r in run.records}) == 6


def test_eps_sigmas_come_from_the_models_table():
    run = Run(objective.Eps(), config=LoopConfig(steps=8, batch_size=1))
    run.run()
    assert all(float(SIGMA_TABLE[0]) <= r.sigma <= float(SIGMA_TABLE[-1]) for r in run.records)
    assert max(r.sigma for r in run.records) > 1.0  # not flow's (0, 1)


def test_epochs_follow_the_micro_batch_order():
    samples = [Sample(latent(i)) for i in range(3)]
    run = Run(samples=samples, config=LoopConfig(steps=7, batch_size=1))
    run.run()
    assert run.trainer.steps_per_epoch == 3
    assert [r.epoch for r in run.records] == [0, 0, 0, 1, 1, 1, 2]
    assert run.predictor.calls == 7


def test_gradient_accumulation_runs_every_micro_batch_and_steps_once():
    samples = [Sample(latent(i)) for i in range(4)]
    run = Run(samples=samples, config=LoopConfig(steps=3, grad_accum=2))
    run.run()
    assert run.predictor.calls == 6
    assert len(run.records) == 3
    assert run.trainer.steps_per_epoch == 2
    assert run.scheduler.last_epoch == 3


# --- exact resume ----------------------------------------------------------------------------------

def _resume_samples():
    # two sizes (two buckets), repeats, and a masked sample: every path of micro_loss is exercised
    weight = torch.zeros(1, 8, 8)
    weight[:, 2:6, 1:7] = 1.0
    return [Sample(latent(1), repeats=2), Sample(latent(2), weight=weight), Sample(latent(3, (4, 6, 6)))]


@pytest.mark.parametrize("family", [objective.Flow(), objective.Eps()], ids=["flow", "eps"])
def test_a_resumed_run_repeats_the_uninterrupted_run_bit_for_bit(family):
    config = LoopConfig(steps=10, batch_size=2, grad_accum=2, seed=17, max_grad_norm=1.0)
    straight = Run(family, samples=_resume_samples(), config=config, dropout=0.2, warmup=2)
    assert straight.run() == Outcome(10)

    first = Run(family, samples=_resume_samples(), config=config, dropout=0.2, warmup=2)
    outcome = first.run(should_stop=lambda: len(first.records) >= 5)
    assert outcome == Outcome(5, interrupted=True)
    assert first.losses == straight.losses[:5]
    network_file = first.network.file_state_dict()
    optimizer_state = copy.deepcopy(first.optimizer.state_dict())
    scheduler_state = copy.deepcopy(first.scheduler.state_dict())
    first.network.detach()

    second = Run(family, samples=_resume_samples(), config=config, dropout=0.2, warmup=2,
                 network_seed=1234)
    assert not same(params_of(second.network), params_of(first.network))
    second.network.load_file_state_dict(network_file, "interrupted.safetensors")
    second.optimizer.load_state_dict(optimizer_state)
    second.scheduler.load_state_dict(scheduler_state)
    torch.manual_seed(987654)  # a resumed process starts with another global RNG state
    assert second.run(start_step=5) == Outcome(10)

    assert [r.step for r in second.records] == list(range(6, 11))
    assert second.losses == straight.losses[5:]  # exact float equality
    assert [r.sigma for r in second.records] == [r.sigma for r in straight.records[5:]]
    assert [r.lr for r in second.records] == [r.lr for r in straight.records[5:]]
    assert [r.epoch for r in second.records] == [r.epoch for r in straight.records[5:]]
    assert same(params_of(second.network), params_of(straight.network))


def test_the_same_config_twice_gives_the_same_run_and_another_seed_another():
    config = LoopConfig(steps=4, seed=5)
    a, b = Run(config=config), Run(config=config)
    a.run()
    b.run()
    assert a.losses == b.losses
    c = Run(config=LoopConfig(steps=4, seed=6))
    c.run()
    assert c.losses != a.losses


def test_starting_at_the_last_step_does_nothing():
    run = Run(config=LoopConfig(steps=3))
    before = params_of(run.network)
    assert run.run(start_step=3) == Outcome(3)
    assert run.records == [] and run.predictor.calls == 0
    assert same(before, params_of(run.network))


# --- interruption ---------------------------------------------------------------------------------

def _stop_after_calls(n):
    """should_stop that answers True from its n-th call on (it is asked before each micro-batch)."""
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= n
    return should_stop


def test_an_interrupt_mid_accumulation_drops_the_partial_step():
    samples = [Sample(latent(i)) for i in range(4)]
    run = Run(samples=samples, config=LoopConfig(steps=5, grad_accum=2))
    after_step = {}
    run.trainer.run(0, lambda r: after_step.__setitem__(r.step, params_of(run.network)),
                    _stop_after_calls(4))  # step 1: calls 1, 2; step 2: call 3 runs, call 4 stops
    assert run.predictor.calls == 3
    assert list(after_step) == [1]
    assert same(params_of(run.network), after_step[1])
    assert all(p.grad is None for p in run.network.parameters())
    assert run.scheduler.last_epoch == 1


def test_an_interrupt_in_the_first_step_returns_step_zero_with_the_initial_weights():
    run = Run(config=LoopConfig(steps=5, grad_accum=2))
    before = params_of(run.network)
    outcome = run.run(should_stop=_stop_after_calls(2))
    assert outcome == Outcome(0, interrupted=True)
    assert run.records == []
    assert same(before, params_of(run.network))
    assert all(p.grad is None for p in run.network.parameters())


def test_an_interrupt_before_anything_runs_no_model_call():
    run = Run()
    assert run.run(should_stop=lambda: True) == Outcome(0, interrupted=True)
    assert run.predictor.calls == 0


class HostCancel(Exception):
    """Stands for the host's Cancel exception (ComfyUI raises its own inside a forward)."""


@pytest.mark.parametrize("where", ["forward", "backward", "on_step"])
def test_a_cancel_raised_inside_a_step_ends_with_the_last_completed_step(where):
    """The host may raise its Cancel inside the model's forward or backward, or while a step's
    callback samples: the run ends with the weights of the last completed step, unchanged."""
    samples = [Sample(latent(i)) for i in range(4)]
    run = Run(samples=samples, config=LoopConfig(steps=6, grad_accum=2))
    after_step = {}
    predict = run.predictor.predict

    def raising_predict(noisy, sigma, conds):
        out = predict(noisy, sigma, conds)
        if run.predictor.calls == 6:  # step 3's second micro-batch
            if where == "forward":
                raise HostCancel()
            out.register_hook(lambda grad: (_ for _ in ()).throw(HostCancel()) if where == "backward" else grad)
        return out

    def on_step(record):
        after_step[record.step] = params_of(run.network)
        if where == "on_step" and record.step == 2:
            raise HostCancel()

    run.predictor.predict = raising_predict
    outcome = run.trainer.run(0, on_step, interrupts=(HostCancel,))
    last = 2
    assert outcome == Outcome(last, interrupted=True)
    assert max(after_step) == last
    assert same(params_of(run.network), after_step[last])
    assert all(p.grad is None for p in run.network.parameters())
    assert run.scheduler.last_epoch == last


def test_an_exception_that_is_not_a_cancel_propagates():
    run = Run(config=LoopConfig(steps=3))
    run.predictor.predict = lambda *a: (_ for _ in ()).throw(RuntimeError("broken model"))
    with pytest.raises(RuntimeError, match="broken model"):
        run.trainer.run(0, interrupts=(HostCancel,))


# --- non-finite loss ------------------------------------------------------------------------------

def test_a_nan_loss_stops_at_its_step_and_keeps_the_previous_weights():
    bad = latent(2)
    bad[0, 3, 3] = float("nan")
    samples = [Sample(latent(1)), Sample(bad)]
    run = Run(samples=samples, config=LoopConfig(steps=6, batch_size=1))
    nan_micro = [i for i in range(6) if run.trainer.order.micro_batch(i)[1] == [1]][0]
    after_step = {0: params_of(run.network)}
    with pytest.raises(NonFiniteLoss, match=f"step {nan_micro + 1}") as error:
        run.trainer.run(0, lambda r: after_step.__setitem__(r.step, params_of(run.network)))
    assert error.value.step == nan_micro + 1
    assert f"weights of step {nan_micro}" in str(error.value)
    assert sorted(after_step) == list(range(nan_micro + 1))
    assert same(params_of(run.network), after_step[nan_micro])
    assert all(p.grad is None for p in run.network.parameters())
    assert run.scheduler.last_epoch == nan_micro


def test_an_infinite_loss_is_refused_too():
    bad = latent(2)
    bad[1, 0, 0] = float("inf")
    run = Run(samples=[Sample(bad)], config=LoopConfig(steps=3))
    before = params_of(run.network)
    with pytest.raises(NonFiniteLoss, match="step 1") as error:
        run.run()
    assert error.value.step == 1
    assert same(before, params_of(run.network))


def test_a_nan_in_any_accumulated_micro_batch_stops_the_step():
    bad = latent(2)
    bad[:, 0, 0] = float("nan")
    samples = [Sample(latent(1)), Sample(bad)]
    run = Run(samples=samples, config=LoopConfig(steps=3, grad_accum=2))
    before = params_of(run.network)
    with pytest.raises(NonFiniteLoss, match="step 1"):
        run.run()
    assert same(before, params_of(run.network))


# --- loss weights -----------------------------------------------------------------------------------

def test_a_weight_of_all_ones_is_the_same_as_no_weight():
    x = latent(1)
    plain = Run(samples=[Sample(x), Sample(latent(2))], config=LoopConfig(steps=1, batch_size=2))
    ones = Run(samples=[Sample(x, weight=torch.ones(1, 8, 8)), Sample(latent(2))],
               config=LoopConfig(steps=1, batch_size=2))
    for index in range(3):
        a, sigma_a, _ = plain.trainer.micro_loss(index)
        b, sigma_b, _ = ones.trainer.micro_loss(index)
        assert torch.equal(sigma_a, sigma_b)
        assert torch.allclose(a, b, rtol=1e-6, atol=0)


def test_a_zero_weight_region_does_not_reach_the_loss():
    # the model is pointwise, so changing the latent where the weight is 0 changes the prediction
    # only there: the loss must not move; changing it where the weight is 1 must
    weight = torch.zeros(1, 8, 8)
    weight[:, :4, :] = 1.0
    x = latent(1)
    outside, inside = x.clone(), x.clone()
    outside[:, 5:, :] += 3.0
    inside[:, :2, :] += 3.0

    def loss(sample_latent, w=weight):
        run = Run(samples=[Sample(sample_latent, weight=w)], config=LoopConfig(steps=1, seed=9))
        return run.trainer.micro_loss(0)[0]

    assert torch.equal(loss(outside), loss(x))
    assert not torch.allclose(loss(inside), loss(x))
    # without the weight the outside change does count
    assert not torch.allclose(loss(outside, None), loss(x, None))


def test_unmasked_weight_one_makes_the_mask_irrelevant():
    weight = torch.zeros(1, 8, 8)
    weight[:, :3, :3] = 1.0
    config = LoopConfig(steps=1, unmasked_weight=1.0)
    masked = Run(samples=[Sample(latent(1), weight=weight)], config=config).trainer.micro_loss(0)[0]
    plain = Run(samples=[Sample(latent(1))], config=config).trainer.micro_loss(0)[0]
    assert torch.allclose(masked, plain, rtol=1e-6, atol=0)


# --- configuration ----------------------------------------------------------------------------------

def test_loop_config_validation():
    flow, eps = objective.Flow(), objective.Eps()
    with pytest.raises(ValueError, match="min-SNR"):
        LoopConfig(steps=10, snr=SnrWeighting(min_snr_gamma=5.0)).validate(flow)
    with pytest.raises(ValueError, match="noise offset"):
        LoopConfig(steps=10, noise_offset=0.1).validate(flow)
    LoopConfig(steps=10, snr=SnrWeighting(min_snr_gamma=5.0), noise_offset=0.1).validate(eps)
    with pytest.raises(ValueError, match="steps must be at least 1, not 0"):
        LoopConfig(steps=0).validate(eps)
    with pytest.raises(ValueError, match="gradient accumulation must be at least 1"):
        LoopConfig(steps=1, grad_accum=0).validate(eps)


def test_the_trainer_validates_before_running():
    with pytest.raises(ValueError, match="min-SNR"):
        Run(objective.Flow(), config=LoopConfig(steps=3, snr=SnrWeighting(min_snr_gamma=5.0)))
    with pytest.raises(ValueError, match="dataset is empty"):
        Run(samples=[], config=LoopConfig(steps=3))


def test_min_snr_changes_the_eps_loss():
    plain = Run(objective.Eps(), config=LoopConfig(steps=1, seed=2)).trainer.micro_loss(0)[0]
    # γ far below every SNR of the table: the weight γ/SNR = γσ² is nowhere 1
    weighted = Run(objective.Eps(), config=LoopConfig(steps=1, seed=2, snr=SnrWeighting(min_snr_gamma=1e-4)))
    assert not torch.allclose(weighted.trainer.micro_loss(0)[0], plain)


def test_sample_view_draws_flips_and_caption_variants_reproducibly():
    from comfyui_lora_lab.training.loop import Sample

    latent = torch.arange(8.0).reshape(2, 2, 2)
    mirrored = latent.flip(-1)
    sample = Sample(latent=latent, cond="a", flipped=(mirrored, None), cond_variants=("a", "b", "c"))
    seen_flip, seen_cond = [], []
    for index in range(300):
        g = torch.Generator().manual_seed(index)
        chosen, _, cond = sample.view(g)
        again, _, cond_again = sample.view(torch.Generator().manual_seed(index))
        assert torch.equal(chosen, again) and cond == cond_again  # the same micro-batch draws the same
        seen_flip.append(torch.equal(chosen, mirrored))
        seen_cond.append(cond)
    assert 0.4 < sum(seen_flip) / 300 < 0.6
    assert all(60 < seen_cond.count(c) < 140 for c in "abc")  # each of the 3 variants about 1/3 of the time
