"""Resolution and aspect-ratio buckets: kohya's bucket list, closest-ratio assignment, no-upscale
buckets, cover-and-centre-crop resizing, the bucket report."""

import math

import pytest
import torch

from comfyui_lora_lab.training.buckets import (BucketSettings, assign_bucket, bucket_report, bucket_sizes,
                                               fit_to_bucket, format_buckets)

DEFAULT = BucketSettings()


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    (dict(step=0), "step"),
    (dict(resolution=-512), "resolution"),
    (dict(resolution=500), "resolution"),  # not a multiple of 64
    (dict(min_side=200), "min_side"),
    (dict(max_side=1000), "max_side"),
    (dict(min_side=640), "min_side"),  # above resolution
    (dict(max_side=448), "max_side"),  # below resolution
])
def test_invalid_settings_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        BucketSettings(**changes)


# --- the bucket list ----------------------------------------------------------------------------

def test_bucket_sizes_match_kohya_at_512():
    # kohya's make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert bucket_sizes(DEFAULT) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
        (1024, 256)]


@pytest.mark.parametrize("settings", [DEFAULT, BucketSettings(1024, 512, 2048, 64), BucketSettings(768, 256, 1024, 32)])
def test_every_bucket_is_within_the_limits(settings):
    sizes = bucket_sizes(settings)
    assert (settings.resolution, settings.resolution) in sizes
    assert len(set(sizes)) == len(sizes)
    for w, h in sizes:
        assert w % settings.step == 0 and h % settings.step == 0
        assert settings.min_side <= min(w, h) and max(w, h) <= settings.max_side
        assert w * h <= settings.resolution ** 2


# --- assignment ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, bucket", [
    ((1000, 1000), (512, 512)),
    ((64, 64), (512, 512)),  # small images are scaled up without no_upscale
    ((3000, 2000), (640, 384)),
    ((2000, 3000), (384, 640)),
    ((576, 448), (576, 448)),  # an image of a bucket's size stays in it
    ((5000, 100), (1024, 256)),  # beyond the widest bucket: the widest
])
def test_the_closest_aspect_ratio_wins(size, bucket):
    assert assign_bucket(size, DEFAULT) == bucket


def test_distance_is_between_log_ratios():
    # 1.47 lies between 576x448 (1.286) and 640x384 (1.667): nearer 1.286 on a linear scale, nearer
    # 1.667 on a log scale (their geometric mean is 1.464)
    assert assign_bucket((147, 100), DEFAULT) == (640, 384)
    assert assign_bucket((146, 100), DEFAULT) == (576, 448)


def test_no_upscale_cuts_a_bucket_from_a_small_image():
    settings = BucketSettings(no_upscale=True)
    assert assign_bucket((700, 300), settings) == (640, 256)
    assert assign_bucket((300, 200), settings) == (256, 192)  # below min_side: the image can't reach it
    assert assign_bucket((512, 320), settings) == (512, 320)
    # at resolution² and above, the ordinary buckets (they only ever scale such an image down)
    assert assign_bucket((3000, 2000), settings) == (640, 384)


@pytest.mark.parametrize("size", [(700, 300), (300, 200), (130, 999), (511, 511), (1000, 100), (255, 257)])
def test_no_upscale_never_enlarges(size):
    bucket = assign_bucket(size, BucketSettings(no_upscale=True))
    assert bucket[0] <= size[0] and bucket[1] <= size[1]
    assert bucket[0] % 64 == 0 and bucket[1] % 64 == 0


def test_no_upscale_keeps_max_side_without_dropping_below_min_side():
    settings = BucketSettings(resolution=512, min_side=128, max_side=1024, no_upscale=True)
    # 1500 wide: scaled to 1024 the height would be 116, floored to 64; min_side keeps it at 128,
    # which the image's own 170 rows reach
    assert assign_bucket((1500, 170), settings) == (1024, 128)


def test_a_side_below_one_step_gets_one_step():
    assert assign_bucket((40, 300), BucketSettings(no_upscale=True)) == (64, 256)


# --- resizing -----------------------------------------------------------------------------------

def test_an_exact_width_multiple_is_centre_cropped_without_resampling():
    image = torch.rand(64, 128, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(64, 128, generator=torch.Generator().manual_seed(1))
    fitted, fitted_mask = fit_to_bucket(image, mask, (64, 64))
    assert torch.equal(fitted, image[:, 32:96])
    assert torch.equal(fitted_mask, mask[:, 32:96])


@pytest.mark.parametrize("shape, bucket", [((300, 200), (384, 640)), ((100, 1000), (1024, 256)),
                                           ((513, 511), (512, 512)), ((37, 53), (576, 448))])
def test_output_is_exactly_the_bucket_in_zero_one(shape, bucket):
    g = torch.Generator().manual_seed(2)
    image = (torch.rand(*shape, 3, generator=g) > 0.5).float()  # hard edges: bicubic overshoots
    mask = (torch.rand(*shape, generator=g) > 0.5).to(torch.float16)
    fitted, fitted_mask = fit_to_bucket(image, mask, bucket)
    assert fitted.shape == (bucket[1], bucket[0], 3) and fitted_mask.shape == (bucket[1], bucket[0])
    assert fitted.dtype == fitted_mask.dtype == torch.float32
    for t in (fitted, fitted_mask):
        assert t.min() >= 0 and t.max() <= 1


def test_resizing_keeps_the_aspect_ratio_and_the_mask_aligned():
    # a 200x400 image, left half masked: scaled by 0.32 to 64x128, the 64x64 crop is the middle,
    # so its left half is masked and its right half is not; a circle stays a circle
    mask = torch.zeros(200, 400)
    mask[:, :200] = 1
    yy, xx = torch.meshgrid(torch.arange(200.0), torch.arange(400.0), indexing="ij")
    disk = (((yy - 99.5) ** 2 + (xx - 199.5) ** 2) < 80 ** 2).float()
    image = disk[..., None].expand(200, 400, 3)
    fitted, fitted_mask = fit_to_bucket(image, mask, (64, 64))
    assert torch.all(fitted_mask[:, :30] > 0.99) and torch.all(fitted_mask[:, 34:] < 0.01)
    row, column = fitted[32, :, 0], fitted[:, 32, 0]
    assert abs(float((row > 0.5).sum()) - float((column > 0.5).sum())) <= 1  # as wide as tall
    assert abs(float((row > 0.5).sum()) - 2 * 80 * 0.32) <= 2


def test_a_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match="mask"):
        fit_to_bucket(torch.rand(10, 10, 3), torch.rand(10, 11), (64, 64))


# --- report -------------------------------------------------------------------------------------

def test_bucket_report_counts_and_formats():
    sizes = [(1000, 1000), (512, 512), (800, 800), (3000, 2000), (600, 360), (100, 100)]
    report = bucket_report(sizes, DEFAULT)
    assert report == {(512, 512): 4, (640, 384): 2}
    assert format_buckets(report) == "512x512: 4, 640x384: 2"
    assert format_buckets({(576, 448): 2, (512, 512): 3}) == "512x512: 3, 576x448: 2"
    assert format_buckets({}) == "no images"


def test_log_distance_is_symmetric_for_transposed_images():
    for w, h in [(300, 200), (147, 100), (1000, 330), (999, 1001)]:
        a, b = assign_bucket((w, h), DEFAULT), assign_bucket((h, w), DEFAULT)
        assert a == (b[1], b[0]), (w, h)
        assert math.isclose(math.log(a[0] / a[1]), -math.log(b[0] / b[1]))


def test_cropped_width_measures_what_fitting_cuts_off_the_sides():
    from comfyui_lora_lab.training.buckets import cropped_width

    assert cropped_width((512, 512), (512, 512)) == 0
    assert abs(cropped_width((1024, 256), (512, 256)) - 0.5) < 1e-9  # a 4:1 image in a 2:1 bucket
    assert cropped_width((256, 512), (256, 384)) == 0  # only the height is cropped
