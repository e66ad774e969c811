"""Save cadence, network settings validation, and the loss chart (smoothing and rendering)."""

import math

import pytest

from comfyui_lora_lab.training.loss_chart import render, smoothed
from comfyui_lora_lab.training.network import NetworkConfig
from comfyui_lora_lab.training.settings import (TARGET_PRESETS, NetworkSettings, SampleSettings, SaveSettings,
                                                network_notes)

SMOOTH_COLOUR = (250, 190, 80)
SAVE_COLOUR = (70, 110, 70)


# --- SaveSettings.due ---------------------------------------------------------------------------

def test_step_cadence():
    save = SaveSettings(every_n_steps=100)
    assert [s for s in range(1, 501) if save.due(s, epoch_done=False, epoch=0)] == [100, 200, 300, 400, 500]
    # an epoch ending does not trigger a save when only steps are asked for
    assert not save.due(150, epoch_done=True, epoch=0)


def test_epoch_cadence_counts_epochs_from_one():
    save = SaveSettings(every_n_epochs=2)
    # epoch is the 0-based index of the epoch that just ended: the 2nd, 4th, ... epochs save
    assert not save.due(10, epoch_done=True, epoch=0)
    assert save.due(20, epoch_done=True, epoch=1)
    assert not save.due(30, epoch_done=True, epoch=2)
    assert save.due(40, epoch_done=True, epoch=3)
    # mid-epoch, never
    assert not save.due(20, epoch_done=False, epoch=1)


def test_every_epoch():
    save = SaveSettings(every_n_epochs=1)
    assert all(save.due(s, epoch_done=True, epoch=e) for s, e in [(3, 0), (6, 1), (9, 2)])


def test_both_cadences_save_on_either():
    save = SaveSettings(every_n_steps=5, every_n_epochs=3)
    assert save.due(5, epoch_done=False, epoch=0)
    assert save.due(7, epoch_done=True, epoch=2)
    assert not save.due(7, epoch_done=True, epoch=1)


def test_no_cadence_never_saves():
    save = SaveSettings()
    assert not any(save.due(s, epoch_done=True, epoch=e) for s in range(1, 50) for e in range(5))


# --- NetworkSettings ----------------------------------------------------------------------------

def test_network_settings_defaults_are_valid():
    settings = NetworkSettings()
    assert settings.preset in TARGET_PRESETS
    assert settings.network == NetworkConfig()
    assert settings.continue_from is None


@pytest.mark.parametrize("preset", ["attention", "attention+mlp", "all"])
def test_known_presets_are_accepted(preset):
    assert NetworkSettings(preset=preset).preset == preset


@pytest.mark.parametrize("preset", ["everything", "", "Attention"])
def test_an_unknown_preset_is_refused(preset):
    with pytest.raises(ValueError, match="target preset must be one of attention, attention\\+mlp, all"):
        NetworkSettings(preset=preset)


def test_an_invalid_network_is_refused_when_the_settings_are_made():
    with pytest.raises(ValueError, match="conv_rank"):
        NetworkSettings(network=NetworkConfig(algorithm="LoRA", conv_rank=8))
    with pytest.raises(ValueError, match="rank must be at least 1"):
        NetworkSettings(network=NetworkConfig(rank=0))


# --- smoothing ----------------------------------------------------------------------------------

def test_smoothing_is_bias_corrected():
    values = [0.8, 0.6, 0.7, 0.5]
    out = smoothed(values)
    assert out[0] == pytest.approx(0.8)  # not 0.08: the zero start is corrected away
    assert out[1] == pytest.approx((0.09 * 0.8 + 0.1 * 0.6) / 0.19)
    assert smoothed([2.5] * 50) == pytest.approx([2.5] * 50)
    assert smoothed([]) == []


def test_smoothing_follows_the_trend_with_lag():
    out = smoothed([float(i) for i in range(100)], beta=0.9)
    assert all(b > a for a, b in zip(out, out[1:]))
    assert 85 < out[-1] < 99


def test_smoothing_skips_nan_and_inf():
    nan, inf = float("nan"), float("inf")
    out = smoothed([1.0, nan, inf, 3.0, -inf])
    assert len(out) == 5
    assert out[0] == out[1] == out[2] == pytest.approx(1.0)
    assert out[3] == pytest.approx((0.09 * 1.0 + 0.1 * 3.0) / 0.19)
    assert out[4] == out[3]
    assert all(math.isfinite(v) for v in out)


def test_smoothing_before_the_first_finite_value_is_nan():
    nan = float("nan")
    out = smoothed([nan, nan, 4.0, 2.0])
    assert math.isnan(out[0]) and math.isnan(out[1])
    assert out[2] == pytest.approx(4.0)
    assert all(math.isnan(v) for v in smoothed([nan, float("inf")]))


# --- rendering ----------------------------------------------------------------------------------

def _colours(image):
    return {c for _, c in image.getcolors(maxcolors=image.width * image.height)}


@pytest.mark.parametrize("size", [(512, 256), (300, 120)])
@pytest.mark.parametrize("losses", [
    [],
    [0.25],
    [float("nan")],
    [0.5 + 0.4 * math.sin(i / 50) for i in range(3000)],
    [float("nan"), float("inf"), 1.0, -float("inf"), 0.5] * 600,
], ids=["none", "one", "one-nan", "3000", "3000-nonfinite"])
def test_render_gives_an_image_of_the_requested_size(losses, size):
    image = render(losses, saves=[1, 100, 2999, 5000], width=size[0], height=size[1])
    assert image.size == size
    assert image.mode == "RGB"


def test_render_draws_curves_and_save_markers_only_when_there_is_data():
    empty = render([], saves=[1])
    assert SMOOTH_COLOUR not in _colours(empty)
    assert SAVE_COLOUR not in _colours(empty)  # no step to mark yet

    losses = [1.0 / (1 + i) for i in range(200)]
    chart = render(losses, saves=[50, 150])
    assert SMOOTH_COLOUR in _colours(chart)
    assert SAVE_COLOUR in _colours(chart)
    assert SAVE_COLOUR not in _colours(render(losses))


def test_render_of_one_loss_marks_the_point():
    assert SMOOTH_COLOUR in _colours(render([0.3]))


def test_render_with_all_losses_equal_does_not_divide_by_zero():
    image = render([0.7] * 10)
    assert SMOOTH_COLOUR in _colours(image)


# --- SampleSettings.due and settings that cannot take effect -----------------------------------

def test_samples_every_n_steps_also_sample_the_final_step():
    samples = SampleSettings(every_n_steps=4)
    assert [s for s in range(1, 11) if samples.due(s, saved_now=s == 10, final=s == 10)] == [4, 8, 10]
    with_saves = SampleSettings()
    assert [s for s in range(1, 11) if with_saves.due(s, saved_now=s in (5, 10), final=s == 10)] == [5, 10]


@pytest.mark.parametrize("preset, base, effect", [("attention", "sd15", False), ("attention+mlp", "sdxl", False),
                                                  ("all", "sd15", True), ("all", "flux", False)])
def test_conv_rank_without_convolutions_to_adapt_is_noted(preset, base, effect):
    settings = NetworkSettings(NetworkConfig("LoCon", 8, 8.0, 4, 1.0), preset)
    notes = network_notes(settings, base, has_convolutions=base != "flux")
    assert (notes == []) == effect
    assert all("conv_rank 4 has no effect" in note for note in notes)
    assert network_notes(NetworkSettings(NetworkConfig("LoCon", 8, 8.0), "attention"), "sd15") == []


def test_the_chart_becomes_an_image_batch_without_numpy_warnings():
    import warnings

    from comfyui_lora_lab.training.loss_chart import as_image_batch

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned that the NumPy array was not writable
        batch = as_image_batch(render([1.0, 0.5, 0.25]))
    assert batch.ndim == 4 and batch.shape[-1] == 3 and float(batch.max()) <= 1.0
