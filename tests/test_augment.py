import pytest
import torch

from cifar_lightning.augment import Compose, Cutout, RandomCrop, RandomFlip
from cifar_lightning.module import ImageClassifier
from conftest import compose_train


def ramp(n=8):
    """Images whose pixel values encode their column, so translations and flips are visible."""
    return torch.arange(32.0).expand(n, 3, 32, 32).clone()


@pytest.mark.parametrize("augment", [RandomCrop(4), RandomCrop(2, "reflect"), RandomFlip(), Cutout(8),
                                     Compose(crop=RandomCrop(4), flip=RandomFlip(), cutout=Cutout(16), off=None)])
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


def test_module_augments_training_batches_only():
    cfg = compose_train(["augmentation=strong"])
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, augmentation=cfg.augmentation,
                             class_names=list("abc"), channels_last=False)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels, indices = torch.arange(8) % 3, torch.arange(8)
    plain = module.normalize(images)
    for training, changed in ((False, False), (True, True)):
        module.trainer = type("FakeTrainer", (), {"training": training, "current_epoch": 0})()
        x, y, i = module.on_after_batch_transfer((images, labels, indices), 0)
        assert not torch.equal(x, plain) if changed else torch.equal(x, plain)
        assert torch.equal(y, labels) and torch.equal(i, indices)
