"""Optimizers by name: kohya-style args, every optimizer trains, errors say what to do."""

import sys
import warnings

import pytest
import torch

from comfyui_lora_lab.training.optimizers import (OPTIMIZERS, build_optimizer, check_optimizer_args,
                                                  optimizer_notes, parse_optimizer_args)
from comfyui_lora_lab.training.optional_deps import MissingDependency

SEED_001_ARGS = "decouple=True weight_decay=0.1 d_coef=2 use_bias_correction=True safeguard_warmup=True betas=0.9,0.99"

# Learning rates at which 30 steps visibly fit the tiny regression below.
TRAINING_LR = {"AdamW": 1e-2, "AdamW8bit": 1e-2, "Lion": 1e-3, "Lion8bit": 1e-3, "Prodigy": 1.0, "Adafactor": 1e-2}


def test_parses_the_seed_001_line_to_python_values():
    assert parse_optimizer_args(SEED_001_ARGS) == {
        "decouple": True, "weight_decay": 0.1, "d_coef": 2, "use_bias_correction": True,
        "safeguard_warmup": True, "betas": (0.9, 0.99)}
    assert type(parse_optimizer_args("d_coef=2")["d_coef"]) is int


def test_parses_values_and_separators_as_pasted_from_guides():
    text = "relative_step = false, eps=None,1e-3\n growth_rate=inf scale_parameter=FALSE name='adam' flag=\"True\""
    parsed = parse_optimizer_args(text)
    assert parsed == {"relative_step": False, "eps": (None, 0.001), "growth_rate": float("inf"),
                      "scale_parameter": False, "name": "adam", "flag": "True"}
    assert parse_optimizer_args("betas=0.9, 0.99,weight_decay=1e-2") == {"betas": (0.9, 0.99), "weight_decay": 0.01}
    assert parse_optimizer_args("  \n") == {}


# The lines the seed guides give, verbatim: 001's GUI field (with its quotes), 000's TOML config
# style, and the usual Adafactor line of kohya's SDXL configs.
SEED_001_QUOTED = '"decouple=True weight_decay=0.1 betas=0.9,0.99"'
TOML_LIST = 'optimizer_args = [ "decouple=True", "weight_decay=0.1", "betas=0.9,0.99",]'
ADAFACTOR_LINE = "scale_parameter=False relative_step=False warmup_init=False"


@pytest.mark.parametrize("text", [SEED_001_QUOTED, TOML_LIST, "'decouple=True weight_decay=0.1 betas=(0.9, 0.99)'",
                                  '--optimizer_args "decouple=True" "weight_decay=0.1" "betas=0.9,0.99"'])
def test_kohya_lines_paste_as_they_are(text):
    assert parse_optimizer_args(text) == {"decouple": True, "weight_decay": 0.1, "betas": (0.9, 0.99)}


@pytest.mark.parametrize("name, text, message", [
    ("Prodigy", "decouple=yes", r"decouple=yes: 'yes' is not a value"),
    ("Prodigy", "betas=0.9", r"Prodigy's betas is 2 numbers .*not betas=0.9"),
    ("Prodigy", "decouple='True'", r"Prodigy's decouple is True or False"),
    ("AdamW8bit", "weight_decay=True", r"AdamW8bit's weight_decay is a number"),
    ("AdamW8bit", "optim_bits=8.5", r"optim_bits is a whole number"),
    ("Adafactor", "relative_step=1", r"Adafactor's relative_step is True or False"),
    ("Adafactor", "decouple=True", r"Adafactor has no argument 'decouple'.*scale_parameter, relative_step"),
])
def test_each_value_is_checked_against_the_optimizer_and_named(name, text, message):
    with pytest.raises(ValueError, match=message):
        check_optimizer_args(name, text)
    with pytest.raises(ValueError, match=message):  # refused before a step, not inside the optimizer
        build_optimizer(name, torch.nn.Linear(8, 8).parameters(), lr=1.0, args=text)


def test_adafactor_is_kohyas_transformers_adafactor_with_its_arguments():
    from transformers.optimization import Adafactor

    model, loss_fn = _regression()
    optimizer = build_optimizer("Adafactor", model.parameters(), lr=1e-2, args=ADAFACTOR_LINE)
    assert isinstance(optimizer, Adafactor)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["scale_parameter"], group["relative_step"], group["warmup_init"]) == (
        1e-2, False, False, False)
    assert optimizer_notes("Adafactor", ADAFACTOR_LINE) == []
    # kohya's own default: Adafactor finds its step size; the lr input is kept only for the scheduler
    relative = build_optimizer("Adafactor", [{"params": model.parameters(), "lr": 1e-3}], lr=1e-3,
                               args="relative_step=True warmup_init=True scale_parameter=True")
    first = loss_fn().item()
    for _ in range(30):
        relative.zero_grad()
        loss_fn().backward()
        relative.step()
    assert loss_fn().item() < first
    assert "no effect" in optimizer_notes("Adafactor", "relative_step=True")[0]


@pytest.mark.parametrize("text, bad", [("decouple=True oops weight_decay=0.1", "oops"),
                                       ("d_coef", "d_coef"), ("weight_decay=", "weight_decay=")])
def test_a_token_without_key_value_is_named(text, bad):
    with pytest.raises(ValueError, match=repr(bad)):
        parse_optimizer_args(text)


def _regression():
    torch.manual_seed(0)
    # 128x64 weights: above bitsandbytes' min_8bit_size (4096), so the 8-bit optimizers keep 8-bit state.
    model = torch.nn.Linear(128, 64)
    inputs, targets = torch.randn(32, 128), torch.randn(32, 64)
    return model, lambda: torch.nn.functional.mse_loss(model(inputs), targets)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name):
    model, loss_fn = _regression()
    optimizer = build_optimizer(name, model.parameters(), lr=TRAINING_LR[name])
    first = loss_fn().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < 0.8 * first
    if name.endswith("8bit"):
        assert optimizer.state[model.weight]["state1"].dtype == torch.uint8


def test_registry_names_are_what_the_ui_offers():
    assert OPTIMIZERS == ("AdamW", "AdamW8bit", "Lion", "Lion8bit", "Prodigy", "Adafactor")


def test_args_reach_the_param_groups_and_group_lrs_are_kept():
    unet, text_encoder = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    groups = [{"params": unet.parameters(), "lr": 1.0}, {"params": text_encoder.parameters(), "lr": 0.5}]
    prodigy = build_optimizer("Prodigy", groups, lr=1.0, args=SEED_001_ARGS)
    assert type(prodigy).__name__ == "Prodigy"
    assert [g["lr"] for g in prodigy.param_groups] == [1.0, 0.5]
    assert prodigy.param_groups[0]["d_coef"] == 2 and prodigy.param_groups[0]["betas"] == (0.9, 0.99)
    assert prodigy.param_groups[1]["safeguard_warmup"] is True

    groups = [{"params": unet.parameters(), "lr": 1e-4}, {"params": text_encoder.parameters()}]
    adamw = build_optimizer("AdamW", groups, lr=5e-5, args={"weight_decay": 0.1})
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in adamw.param_groups] == [1e-4, 5e-5]
    assert all(g["weight_decay"] == 0.1 for g in adamw.param_groups)


def test_unknown_argument_names_it_the_optimizer_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"AdamW8bit has no argument 'd_coef'.*weight_decay"):
        build_optimizer("AdamW8bit", torch.nn.Linear(8, 8).parameters(), lr=1e-4, args="d_coef=2")
    with pytest.raises(ValueError, match="learning-rate input"):
        build_optimizer("AdamW", torch.nn.Linear(8, 8).parameters(), lr=1e-4, args="lr=1")


def test_unknown_optimizer_lists_the_valid_names():
    with pytest.raises(ValueError, match="'SGD'.*AdamW, AdamW8bit, Lion, Lion8bit, Prodigy, Adafactor"):
        build_optimizer("SGD", torch.nn.Linear(8, 8).parameters(), lr=1e-4)


def test_prodigy_with_a_small_lr_warns_but_keeps_it():
    with pytest.warns(UserWarning, match="Prodigy expects lr≈1.0"):
        optimizer = build_optimizer("Prodigy", torch.nn.Linear(8, 8).parameters(), lr=1e-4)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_optimizer("Prodigy", torch.nn.Linear(8, 8).parameters(), lr=1.0)


@pytest.mark.parametrize("module, names, pip", [
    ("bitsandbytes", ("AdamW8bit", "Lion", "Lion8bit"), "pip install bitsandbytes"),
    ("prodigyopt", ("Prodigy",), "pip install prodigyopt"),
    ("transformers", ("Adafactor",), "pip install transformers"),
])
def test_a_missing_library_disables_only_its_optimizers(monkeypatch, module, names, pip):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for name in names:
        with pytest.raises(MissingDependency, match=pip):
            build_optimizer(name, torch.nn.Linear(8, 8).parameters(), lr=1.0)
    assert isinstance(build_optimizer("AdamW", torch.nn.Linear(8, 8).parameters(), lr=1e-4), torch.optim.AdamW)
