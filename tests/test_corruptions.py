"""The CIFAR-10-C-style corruptions: shapes, ranges, determinism, severity order, and known values."""

import colorsys

import pytest
import torch

from cifar_lightning.blocks import corruptions
from cifar_lightning.blocks.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cifar_lightning.blocks.robustness import choose

# Where the published CIFAR-10 tables move the image further from the original at every step. The others are not
# monotone by construction, which their own tests below pin down: glass blur's blur hides part of its shuffling,
# snow's severity 3 zooms its flakes less than 2, frost and elastic trade one parameter against another.
MONOTONE = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "zoom_blur",
    "fog",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
]


@pytest.fixture(scope="module")
def images():
    """64 smooth, photo-like uint8 images: blurred colour noise over a gradient, with some black and white."""
    generator = torch.Generator().manual_seed(0)
    noise = corruptions.blur(torch.rand((64, 3, 32, 32), generator=generator), 2.0)
    noise = (noise - noise.amin(dim=(1, 2, 3), keepdim=True)) / noise.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32)
    x = (0.6 * noise + 0.4 * ramp).clamp(0, 1)
    x[:, :, :2, :2], x[:, :, -2:, -2:] = 0, 1
    return (x * 255).round().to(torch.uint8)


def distance(a, b):
    return (a.float() - b.float()).abs().mean().item() / 255


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_and_determinism(name, images):
    for severity in SEVERITIES:
        out = corrupt(images[:16], name, severity, seed=3)
        assert out.shape == (16, 3, 32, 32) and out.dtype == torch.uint8
        assert distance(out, images[:16]) > 0  # every severity changes the images
    assert torch.equal(out, corrupt(images[:16], name, 5, seed=3))  # a seed fixes every draw
    raw = CORRUPTIONS[name](images[:16].float() / 255, 5, torch.Generator().manual_seed(0))
    assert raw.shape == (16, 3, 32, 32) and torch.isfinite(raw).all()  # nothing hidden by the conversion to uint8


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in CORRUPTIONS
        if n not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")
    ],
)
def test_random_corruptions_change_with_the_seed(name, images):
    assert not torch.equal(corrupt(images[:8], name, 3, seed=0), corrupt(images[:8], name, 3, seed=1))


@pytest.mark.parametrize("name", MONOTONE)
def test_higher_severity_moves_the_images_further(name, images):
    distances = [distance(corrupt(images, name, s), images) for s in SEVERITIES]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_the_non_monotone_tables_order_what_they_order(images):
    def d(name, severity):
        return distance(corrupt(images, name, severity), images)

    # glass blur: the same blur with a second pass of shuffling is further
    assert d("glass_blur", 4) > d("glass_blur", 2) and d("glass_blur", 5) > d("glass_blur", 3)
    # snow: more, larger flakes and a stronger wash at 4 and 5
    assert d("snow", 1) < d("snow", 2) < d("snow", 4) < d("snow", 5)
    # frost: a heavier texture over the same image at 1 -> 2; a fainter image under it from 3 on
    assert d("frost", 1) < d("frost", 2)
    frost = [corrupt(images, "frost", s, seed=0).float() for s in SEVERITIES]
    correlation = [torch.corrcoef(torch.stack([f.flatten(), images.float().flatten()]))[0, 1] for f in frost]
    assert all(a > b for a, b in zip(correlation, correlation[1:]))
    # elastic: severity 1 is a pure affine warp (its displacement field has alpha 0), the others add a field
    assert d("elastic_transform", 1) > 0 and d("elastic_transform", 4) > d("elastic_transform", 5)


def test_brightness_is_a_shift_of_hsv_value():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((4, 3, 8, 8), generator=generator)
    x[0, :, 0, 0] = 0  # black turns grey
    for severity, shift in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3)):
        out = corruptions.brightness(x, severity, generator)
        for n, i, j in [(0, 0, 0), (1, 2, 3), (2, 7, 7), (3, 4, 1)]:
            h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
            expected = colorsys.hsv_to_rgb(h, s, min(v + shift, 1))
            assert out[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-6)


def test_contrast_scales_each_channel_about_its_mean():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for severity, factor in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15)):
        out = corruptions.contrast(x, severity, None)
        for n in range(2):
            for c in range(3):
                mean = x[n, c].mean()
                assert torch.allclose(out[n, c], (x[n, c] - mean) * factor + mean, atol=1e-6)


def test_gaussian_noise_has_the_published_spread():
    x = torch.full((100, 3, 32, 32), 0.5)
    for severity, sigma in zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10)):
        noise = corruptions.gaussian_noise(x, severity, torch.Generator().manual_seed(severity)) - x
        assert noise.std().item() == pytest.approx(sigma, rel=0.01) and abs(noise.mean().item()) < 1e-3


def test_impulse_noise_replaces_the_published_share_with_black_and_white():
    x = torch.full((50, 3, 32, 32), 0.5)
    for severity, amount in zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07)):
        out = corruptions.impulse_noise(x, severity, torch.Generator().manual_seed(0))
        salt, pepper = (out == 1).float().mean().item(), (out == 0).float().mean().item()
        assert salt == pytest.approx(amount / 2, rel=0.1) and pepper == pytest.approx(amount / 2, rel=0.1)
        assert ((out == 0.5) | (out == 0) | (out == 1)).all()


def test_pixelate_box_filter_averages_blocks_and_keeps_flat_images():
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(corruptions.pixelate(flat, 5, None), flat)
    # 32 -> 16 is an exact 2x2 mean, as Pillow's BOX filter gives
    matrix = corruptions._box_resampling(32, 16)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(matrix @ x @ matrix.T, torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)


def test_blur_matches_a_direct_gaussian_and_keeps_the_mean():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1
    out = corruptions.blur(x, 1.0)
    t = torch.arange(-4, 5, dtype=torch.float32)
    g = torch.exp(-(t**2) / 2)
    g /= g.sum()
    assert torch.allclose(out[0, 0, 3:12, 3:12], g.view(-1, 1) * g.view(1, -1), atol=1e-6)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_plasma_fractal_is_in_range_and_smoother_with_a_larger_decay():
    generator = torch.Generator().manual_seed(0)
    rough = corruptions.plasma_fractal(16, 32, 1.75, generator)
    smooth = corruptions.plasma_fractal(16, 32, 3.0, generator)
    assert rough.min() == 0 and rough.max() == 1 and rough.shape == (16, 32, 32)
    assert smooth.diff(dim=2).abs().mean() < rough.diff(dim=2).abs().mean()


def test_motion_blur_trails_in_one_direction():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1
    out = corruptions._motion_blur(x, radius=6, sigma=2.0, angles=torch.tensor([0.0]))
    row = out[0, 0, 16]
    # each pixel reads from itself and the pixels to its right: the point smears to the left only
    assert row[16] > row[15] > row[14] > 0 and row[17:].sum() == 0 and out.sum().item() == pytest.approx(1, abs=1e-5)


def test_choose_is_seeded_sorted_and_capped():
    assert torch.equal(choose(100, 10, 0), choose(100, 10, 0))
    assert not torch.equal(choose(100, 10, 0), choose(100, 10, 1))
    picked = choose(100, 10, 0)
    assert torch.equal(picked, picked.sort().values) and len(picked.unique()) == 10
    assert torch.equal(choose(5, 10, 0), torch.arange(5))
