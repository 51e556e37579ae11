"""Batch-wise augmentations of float image tensors (N, C, H, W), run on the device.

Each one is a callable `(images, indices, epoch) -> images`: `indices` are the dataset positions of the
batch's images and `epoch` the current epoch, for augmentations whose choice per image depends on them.
Randomness comes from torch's global generator on the images' device, so `seed` makes runs repeatable.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval


class Compose:
    """Applies the named augmentations in order; a name set to null is skipped (one override drops it)."""

    takes_configs = True  # its keywords are augmentations' configs: the checker checks each against its own target

    def __init__(self, **augmentations):
        self.augmentations = {name: a for name, a in augmentations.items() if a is not None}

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        for augment in self.augmentations.values():
            images = augment(images, indices, epoch)
        return images

    def __repr__(self):
        return f"Compose({', '.join(f'{k}={v!r}' for k, v in self.augmentations.items())})"


class RandomCrop:
    """Pad by `padding` pixels, then take a random crop of the original size: a random translation of up to
    `padding` pixels."""

    def __init__(self, padding: int = 4, padding_mode: str = "constant"):
        self.padding, self.padding_mode = padding, padding_mode

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0):
        n, _, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p), mode=self.padding_mode)
        top = torch.randint(0, 2 * p + 1, (n,), device=images.device)
        left = torch.randint(0, 2 * p + 1, (n,), device=images.device)
        return crop(padded, top, left, h, w)

    def __repr__(self):
        return f"RandomCrop(padding={self.padding}, padding_mode={self.padding_mode!r})"


def crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A height x width window of each image (N, C, H, W), at its own top-left corner (top[n], left[n]): two
    gathers for the whole batch instead of a Python loop over images."""
    n, c, _, full_width = images.shape
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1) + top.view(n, 1, 1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width) + left.view(n, 1, 1, 1)
    return images.gather(2, rows.expand(n, c, height, full_width)).gather(3, cols.expand(n, c, height, width))


class RandomFlip:
    """Mirror each image left-right with probability 1/2."""

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0):
        flip = torch.rand(len(images), device=images.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def __repr__(self):
        return "RandomFlip()"


class Cutout:
    """Zero a random `size`x`size` square per image (DeVries & Taylor, 2017). Images are normalised
    before augmentation, so zero is the mean colour. The square may hang over the border."""

    def __init__(self, size: int = 16):
        self.size = size

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0):
        n, _, h, w = images.shape
        cy = torch.randint(0, h, (n, 1, 1), device=images.device)
        cx = torch.randint(0, w, (n, 1, 1), device=images.device)
        ys = torch.arange(h, device=images.device).view(1, h, 1)
        xs = torch.arange(w, device=images.device).view(1, 1, w)
        half = self.size // 2
        inside = (ys >= cy - half) & (ys < cy - half + self.size) & (xs >= cx - half) & (xs < cx - half + self.size)
        return images.masked_fill(inside.unsqueeze(1), 0.0)

    def __repr__(self):
        return f"Cutout(size={self.size})"


class AlternatingFlip:
    """Flip each image at random in the first epoch, then exactly on the epochs where it was not flipped the
    epoch before (airbench): every image is seen both ways every two epochs, which the paper found worth about
    10% fewer steps for the same accuracy than independent random flips."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int = 0):
        # a fixed pseudo-random bit per dataset index: whether the image is flipped on even epochs
        mixed = (indices.to(images.device) * 2654435761 + self.seed * 40503) % (2**31)
        flip = ((mixed >> 16) & 1).bool() ^ bool(epoch % 2)
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def __repr__(self):
        return f"AlternatingFlip(seed={self.seed})"


class BrightnessContrast:
    """Per image, shift every pixel by the same brightness offset, uniform in +-`brightness`, then scale by a
    contrast factor, uniform in 1 +- `contrast` (hiverge/cifar10-speedrun, after airbench94_muon). Both act on the
    normalised images, whose 0 is the training split's mean colour, so contrast scales around it; the units are
    the normalisation's standard deviations."""

    def __init__(
        self,
        brightness: Annotated[float, Ge(0)] = 0.14,
        contrast: Annotated[
            float, Interval(ge=0, lt=1), "must be at least 0 and below 1 (a scale stays positive)"
        ] = 0.13,
    ):
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0):
        n = len(images)
        shift = (torch.rand(n, 1, 1, 1, device=images.device) * 2 - 1) * self.brightness
        scale = 1 + (torch.rand(n, 1, 1, 1, device=images.device) * 2 - 1) * self.contrast
        return (images + shift.to(images.dtype)) * scale.to(images.dtype)

    def __repr__(self):
        return f"BrightnessContrast(brightness={self.brightness}, contrast={self.contrast})"


class AugMix:
    """AugMix (Hendrycks et al., ICLR 2020) without its consistency loss, batch-wise: each image is mixed with
    `width` chains of 1..`depth` random operations, chain weights ~ Dirichlet(1) and the mix ~ Beta(1, 1) per
    image. The operations are the paper's, which leave out anything close to the corruptions that robustness is
    tested on (noise, blur, weather, contrast, brightness, JPEG, pixelation), so the test set stays unseen.
    `severity` (1..10, the paper's 3) scales every operation's strength.

    The images arrive normalised and the operations are defined on the 0..1 pixel scale: a batch of CIFAR
    images holds black and white pixels in every channel, so the batch's per-channel minimum and maximum are
    where 0 and 1 went, whatever normalisation the data module chose."""

    OPERATIONS = (
        "autocontrast",
        "equalize",
        "posterize",
        "solarize",
        "rotate",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    )

    def __init__(self, width: int = 3, depth: int = 3, severity: float = 3):
        self.width, self.depth, self.severity = width, depth, severity

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0):
        low = images.amin(dim=(0, 2, 3), keepdim=True)
        high = images.amax(dim=(0, 2, 3), keepdim=True)
        x = (images - low) / (high - low).clamp_min(1e-6)
        n = len(x)
        weights = torch.distributions.Dirichlet(torch.ones(self.width, device=x.device)).sample((n,))
        mix = torch.rand(n, 1, 1, 1, device=x.device)  # Beta(1, 1)
        chains = torch.zeros_like(x)
        for k in range(self.width):
            chain = x
            length = torch.randint(1, self.depth + 1, (n,), device=x.device)
            for step in range(self.depth):
                changed = self._random_operation(chain)
                chain = torch.where((step < length).view(-1, 1, 1, 1), changed, chain)
            chains = chains + weights[:, k].view(-1, 1, 1, 1) * chain
        mixed = (1 - mix) * x + mix * chains
        return mixed * (high - low) + low

    def _random_operation(self, x: torch.Tensor):
        """One operation per image, chosen uniformly; every operation is computed for the batch and selected per
        image, which costs a few elementwise passes and one resampling instead of a Python loop over images."""
        n, device = len(x), x.device
        choice = torch.randint(0, len(self.OPERATIONS), (n,), device=device)
        # the paper's level: uniform in [0.1, severity], 10 the strongest
        level = (torch.rand(n, device=device) * (self.severity - 0.1) + 0.1) / 10
        sign = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        out = torch.where((choice == 0).view(-1, 1, 1, 1), autocontrast(x), x)
        out = torch.where((choice == 1).view(-1, 1, 1, 1), equalize(x), out)
        bits = 4 - (level * 4).floor()  # 4 bits, 3 at the strongest
        step = (2 ** (8 - bits)).view(-1, 1, 1, 1)
        out = torch.where((choice == 2).view(-1, 1, 1, 1), (x * 255 / step).floor() * step / 255, out)
        threshold = (1 - level).view(-1, 1, 1, 1)
        out = torch.where((choice == 3).view(-1, 1, 1, 1), torch.where(x >= threshold, 1 - x, x), out)
        # geometric operations as one affine resampling, the identity for images that chose something else
        theta = torch.eye(2, 3, device=device).repeat(n, 1, 1)
        angle = torch.where(choice == 4, sign * level * 30 * torch.pi / 180, 0.0)
        theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
        theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
        theta[:, 0, 1] += torch.where(choice == 5, sign * level * 0.3, 0.0)
        theta[:, 1, 0] += torch.where(choice == 6, sign * level * 0.3, 0.0)
        # translations of up to a third of the image; the grid spans 2 units per image width
        theta[:, 0, 2] = torch.where(choice == 7, sign * level * 2 / 3, 0.0)
        theta[:, 1, 2] = torch.where(choice == 8, sign * level * 2 / 3, 0.0)
        # resampled whether or not any image chose one: asking would read a flag back from the device every time
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x - 0.5, grid, align_corners=False) + 0.5  # uncovered corners: mid grey
        return torch.where((choice >= 4).view(-1, 1, 1, 1), moved, out)

    def __repr__(self):
        return f"AugMix(width={self.width}, depth={self.depth}, severity={self.severity})"


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full 0..1 range."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-6), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel: each pixel becomes the share of the channel's pixels at or below it."""
    n, c, h, w = x.shape
    flat = (x * 255).round().clamp(0, 255).flatten(2)
    counts = torch.zeros(n, c, 256, device=x.device).scatter_add_(2, flat.long(), torch.ones_like(flat))
    cdf = counts.cumsum(2) / (h * w)
    return cdf.gather(2, flat.long()).view(n, c, h, w)
