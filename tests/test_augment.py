import pytest
import torch
from conftest import compose_train

from cifar_lightning.blocks.augment import (
    AugMix,
    BrightnessContrast,
    Compose,
    Cutout,
    RandomCrop,
    RandomFlip,
    autocontrast,
    equalize,
)
from cifar_lightning.blocks.module import ImageClassifier


def ramp(n=8):
    """Images whose pixel values encode their column, so translations and flips are visible."""
    return torch.arange(32.0).expand(n, 3, 32, 32).clone()


@pytest.mark.parametrize(
    "augment",
    [
        RandomCrop(4),
        RandomCrop(2, "reflect"),
        RandomFlip(),
        Cutout(8),
        BrightnessContrast(),
        Compose(crop=RandomCrop(4), flip=RandomFlip(), cutout=Cutout(16), off=None),
    ],
)
def test_augmentation_keeps_shape_dtype_and_device(augment):
    images = torch.randn(16, 3, 32, 32)
    out = augment(images, torch.arange(16), 0)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device


def test_crop_is_a_translation_within_the_padding():
    torch.manual_seed(0)
    out = RandomCrop(padding=4)(ramp(64) + 1)  # +1: padding (0) is distinguishable from content
    shifts = set()
    for image in out:
        row = image[0, 16]
        content = row[row > 0]
        assert torch.all(content.diff() == 1)  # a contiguous run of the original columns
        shifts.add(int(row[row > 0][0] - 1) - int((row > 0).nonzero()[0]))
    assert shifts <= set(range(-4, 5)) and len(shifts) > 3


def test_flip_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    images = ramp(200)
    out = RandomFlip()(images)
    flipped = (out == images.flip(3)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert torch.all(flipped ^ kept) and 70 < flipped.sum() < 130


def test_cutout_zeroes_one_square_per_image():
    torch.manual_seed(0)
    out = Cutout(size=8)(torch.ones(50, 3, 32, 32))
    zeroed = (out == 0).all(1).flatten(1).sum(1)
    assert torch.all((zeroed > 0) & (zeroed <= 64)) and (zeroed == 64).any()


def test_brightness_contrast_is_one_shift_and_one_scale_per_image_within_range():
    torch.manual_seed(0)
    images = torch.randn(200, 3, 32, 32)
    out = BrightnessContrast(brightness=0.2, contrast=0.3)(images)
    # (x + shift) * scale: out is affine in x with the same slope and offset at every pixel of an image
    x, y = images.flatten(1), out.flatten(1)
    scale = (y[:, 1] - y[:, 0]) / (x[:, 1] - x[:, 0])
    shift = y[:, 0] / scale - x[:, 0]
    assert torch.allclose(y, (x + shift[:, None]) * scale[:, None], atol=1e-4)
    assert scale.min() >= 0.7 - 1e-4 and scale.max() <= 1.3 + 1e-4 and scale.std() > 0.1
    assert shift.abs().max() <= 0.2 + 1e-4 and shift.std() > 0.05


def test_module_augments_training_batches_only():
    cfg = compose_train(["augmentation=strong"])
    module = ImageClassifier(
        net=cfg.model,
        optimizer=cfg.optimizer,
        augmentation=cfg.augmentation,
        class_names=list("abc"),
        channels_last=False,
    )
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels, indices = torch.arange(8) % 3, torch.arange(8)
    plain = module.normalize(images)
    for training, changed in ((False, False), (True, True)):
        module.trainer = type("FakeTrainer", (), {"training": training, "current_epoch": 0})()
        x, y, i = module.on_after_batch_transfer((images, labels, indices), 0)
        if changed:  # training batches: normalised, then augmented
            assert x.dtype == torch.float32 and not torch.equal(x, plain)
        else:  # the others stay uint8 for logits(), which normalises them without augmenting
            assert torch.equal(x, images) and torch.equal(module.normalize(x), plain)
        assert torch.equal(y, labels) and torch.equal(i, indices)


def test_augmix_keeps_the_pixel_range_and_mixes_with_the_original():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    pixels = torch.rand(64, 3, 32, 32)
    pixels[:, :, 0, 0], pixels[:, :, 0, 1] = 0, 1  # black and white in every channel, as in a CIFAR batch
    x = (pixels - mean) / std
    out = AugMix()(x, torch.arange(64), 0)
    assert out.shape == x.shape
    low, high = (0 - mean) / std, (1 - mean) / std
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()  # still a 0..1 image under the normalisation
    changed = (out - x).flatten(1).abs().amax(1) > 1e-4
    assert changed.float().mean() > 0.9
    # a mix: every output stays correlated with its own image more than with any other
    flat_out, flat_in = out.flatten(1), x.flatten(1)
    similarity = torch.corrcoef(torch.cat([flat_out, flat_in]))[:64, 64:]
    assert torch.equal(similarity.argmax(1), torch.arange(64))


def test_augmix_operations_equal_their_direct_definitions():
    x = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    stretched = autocontrast(x)
    assert torch.allclose(stretched.amin(dim=(2, 3)), torch.zeros(2, 3)) and torch.allclose(
        stretched.amax(dim=(2, 3)), torch.ones(2, 3)
    )
    levels = torch.randint(0, 256, (1, 1, 4, 4)).float() / 255
    equalized = equalize(levels)
    for i in range(4):
        for j in range(4):
            assert equalized[0, 0, i, j] == pytest.approx((levels <= levels[0, 0, i, j]).float().mean().item())
