"""The 15 corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), generated batch-wise with torch.

Each corruption is `(images, severity, generator) -> images` on float images (N, 3, H, W) in 0..1, severity 1..5,
every random draw from `generator`, so a seed fixes the result. The severity tables are the published CIFAR-10
ones (the original generator's make_cifar_c.py), which are much milder than ImageNet-C's. The operations are
re-implemented in torch, so the images approximate CIFAR-10-C rather than reproduce it: motion blur follows
ImageMagick's kernel, resampling is bilinear where the original used scipy or OpenCV, and frost, whose
photographs we cannot download, blends a synthesised ice texture with the original's weights.
"""

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cifar_lightning.blocks.augment import crop


def _power_of_two_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / max(sigma, 1e-12)) ** 2)
    return kernel / kernel.sum()


def _filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with a 2-D kernel (odd sides), padding the border with `mode`."""
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    return F.conv2d(padded, kernel.expand(c, 1, kh, kw).to(x), groups=c)


def blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> torch.Tensor:
    """skimage.filters.gaussian (separable, 'nearest' border by default)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, truncate)
    return _filter(_filter(x, k.view(1, -1), mode), k.view(-1, 1), mode)


def _translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, i + dy[n], j + dx[n]] for whole-pixel shifts, the border pixels repeated outside
    (nearest-neighbour resampling at integer offsets is exact, and twice as fast as two gathers)."""
    n, _, h, w = x.shape
    theta = torch.eye(2, 3).repeat(n, 1, 1)
    theta[:, 0, 2], theta[:, 1, 2] = dx * 2 / w, dy * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's -motion-blur: a one-sided Gaussian trail of 2 * radius + 1 pixels along each image's angle
    (degrees), weights exp(-i^2 / 2 sigma^2), offsets rounded to whole pixels, edge pixels repeated."""
    width = 2 * radius + 1
    # taps past 4 sigma weigh under 0.03% of the first and change no 8-bit value: skip their resampling
    taps = torch.arange(min(width, math.ceil(4 * sigma) + 1), dtype=torch.float32)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    radians = angles * math.pi / 180
    out = torch.zeros_like(x)
    for i, weight in enumerate(weights):
        dx = torch.ceil(i * torch.cos(radians) - 0.5).long()
        dy = torch.ceil(i * torch.sin(radians) - 0.5).long()
        out += weight * _translate(x, dx, dy)
    return out


def _zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by `factor` (>= 1), bilinear, same size (the original's clipped_zoom)."""
    theta = torch.tensor([[1 / factor, 0, 0], [0, 1 / factor, 0]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def plasma_fractal(count: int, size: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    """Diamond-square height maps (count, size, size) in 0..1, size a power of two; each level's random
    displacement is `decay` times smaller than the one before, so a smaller decay gives finer, busier clouds."""
    maps = torch.zeros(count, size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def displaced(sums: torch.Tensor) -> torch.Tensor:
        return sums / 4 + wibble * _uniform(generator, sums.shape, -wibble, wibble).double()

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        maps[:, half::step, half::step] = displaced(squares)
        centres, corners = maps[:, half::step, half::step], maps[:, ::step, ::step]
        maps[:, ::step, half::step] = displaced(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        maps[:, half::step, ::step] = displaced(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low)).float()


def _plasma_like(x: torch.Tensor, decay: float, generator: torch.Generator) -> torch.Tensor:
    """A plasma map per image, (N, 1, H, W), cut from the smallest power-of-two square that covers it."""
    h, w = x.shape[-2:]
    return plasma_fractal(len(x), _power_of_two_at_least(max(h, w)), decay, generator)[:, None, :h, :w]


# ---------------------------------------------------------------------------------------------- noise
def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return x + torch.randn(x.shape, generator=generator) * sigma


def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    photons = (500, 250, 100, 75, 50)[severity - 1]
    return torch.poisson(x * photons, generator=generator) / photons


def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper: this share of the values (each channel apart) set to 0 or 1, half each."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    u = torch.rand(x.shape, generator=generator)
    return torch.where(u < amount / 2, 1.0, torch.where(u < amount, 0.0, x))


# ---------------------------------------------------------------------------------------------- blur
def defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A disk of this radius, anti-aliased with a 3x3 Gaussian of this sigma (below radius 1, a soft point)."""
    radius, alias_sigma = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    t = torch.arange(-3, 4, dtype=torch.float32)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= radius**2).float()
    disk /= disk.sum()
    g = torch.exp(-0.5 * (torch.arange(-1, 2, dtype=torch.float32) / alias_sigma) ** 2)
    g = (g / g.sum()).view(-1, 1) * (g / g.sum()).view(1, -1)
    kernel = F.conv2d(disk[None, None], g[None, None], padding=1)[0, 0]
    return _filter(x, kernel, mode="reflect")


def glass_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Blur, quantise, swap each pixel with a neighbour up to `delta` up/left (sweeping from the bottom-right
    corner, `iterations` times), blur again: frosted glass."""
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    n, _, h, w = x.shape
    pixels = (blur(x, sigma) * 255).floor().clamp(0, 255).permute(0, 2, 3, 1).contiguous()  # N, H, W, C
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    offsets = torch.randint(-delta, delta, (iterations, len(rows), len(cols), 2, n), generator=generator)
    images = torch.arange(n)
    for it in range(iterations):
        for a, i in enumerate(rows):
            for b, j in enumerate(cols):
                dy, dx = offsets[it, a, b]
                here, there = pixels[images, i, j].clone(), pixels[images, i + dy, j + dx].clone()
                pixels[images, i, j], pixels[images, i + dy, j + dx] = there, here
    return blur(pixels.permute(0, 3, 1, 2) / 255, sigma)


def motion_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
    return _motion_blur(x, radius, sigma, _uniform(generator, (len(x),), -45, 45))


def zoom_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """The mean of the image and its zooms by 1.00, 1.01, ... up to 1.05 .. 1.25."""
    steps = (6, 11, 16, 21, 26)[severity - 1]
    out = x.clone()
    for k in range(steps):
        out += _zoom(x, 1 + k / 100)
    return out / (steps + 1)


# ---------------------------------------------------------------------------------------------- weather
def snow(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Flakes (thresholded, zoomed Gaussian noise, motion-blurred downwards at a random slant) added twice
    (once turned by 180 degrees) over an image washed towards white."""
    mean, std, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[severity - 1]
    n, _, h, w = x.shape
    flakes = torch.randn((n, 1, h, w), generator=generator) * std + mean
    flakes = _zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp(0, 1)
    flakes = (flakes * 255).floor() / 255  # the original passes the layer through an 8-bit PNG
    flakes = _motion_blur(flakes, radius, sigma, _uniform(generator, (n,), -135, -45))
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + flakes + flakes.flip(2, 3)


def frost_texture(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A synthetic stand-in for the original's frost photographs (count, 3, size, size) in 0..1: bright, thin
    crystal streaks in random directions over a cloudy pale-blue film. It plays the photographs' role (a bright
    texture blended over the image with the original weights) without their look."""
    seeds = (torch.rand((count, 1, size, size), generator=generator) > 0.93).float()
    crystals = torch.zeros_like(seeds)
    for _ in range(3):
        crystals += _motion_blur(seeds, 3, 2.0, _uniform(generator, (count,), -180, 180))
    crystals = blur(crystals, 0.5)
    crystals /= crystals.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    film = plasma_fractal(count, size, 2.0, generator)[:, None]
    texture = (0.55 * film + 0.75 * crystals).clamp(0, 1)
    return texture * torch.tensor([0.85, 0.93, 1.0]).view(1, 3, 1, 1)


def frost(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Like the original, a random crop of one of a few large frost textures, blended over each image."""
    keep, weight = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    n, _, h, w = x.shape
    size = 4 * _power_of_two_at_least(max(h, w))
    textures = frost_texture(6, size, generator)
    choice = torch.randint(0, len(textures), (n,), generator=generator)
    top = torch.randint(0, size - h + 1, (n,), generator=generator)
    left = torch.randint(0, size - w + 1, (n,), generator=generator)
    return keep * x + weight * crop(textures[choice], top, left, h, w)


def fog(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A plasma-fractal cloud added, then the image rescaled so that its brightest value stays where it was."""
    thickness, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[severity - 1]
    brightest = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + thickness * _plasma_like(x, decay, generator)
    return x * brightest / (brightest + thickness)


# ---------------------------------------------------------------------------------------------- digital
def brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Value (HSV) raised by this much, hue and saturation kept: every channel scales by V'/V, black turns grey."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    raised = (value + shift).clamp(max=1)
    return torch.where(value > 0, x * raised / value.clamp_min(1e-12), raised)


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * factor + means


def elastic_transform(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A random affine warp (three points moved by up to `jitter` px), then a smooth random displacement field
    (uniform noise blurred with `sigma`, times `alpha` px); borders mirrored. Sizes are shares of the image."""
    size = x.shape[-1]
    alpha, sigma, jitter = (
        size * a
        for a in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[
            severity - 1
        ]
    )
    n, _, h, w = x.shape
    centre, reach = torch.tensor([w // 2, h // 2], dtype=torch.float32), min(h, w) // 3
    source = torch.stack([centre + reach, centre + torch.tensor([reach, -reach]), centre - reach])  # (x, y) px
    target = source + _uniform(generator, (n, 3, 2), -jitter, jitter)
    ones = torch.ones(3, 1)
    # the affine map taking target to source, i.e. where each output pixel reads from
    inverse = torch.linalg.solve(torch.cat([target, ones.expand(n, 3, 1)], 2), source.expand(n, 3, 2))  # (n, 3, 2)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    reads = (points @ inverse).view(n, h, w, 2)
    x = _sample(x, reads[..., 0], reads[..., 1])
    if alpha > 0:
        field = _uniform(generator, (n, 2, h, w), -1, 1)
        field = blur(field, sigma, truncate=3, mode="reflect") * alpha
        x = _sample(x, xs + field[:, 0], ys + field[:, 1])
    return x


def _sample(x: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Bilinear reads at pixel coordinates (N, H, W), mirrored about the border pixels' centres."""
    h, w = x.shape[-2:]
    grid = torch.stack([cols / (w - 1) * 2 - 1, rows / (h - 1) * 2 - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _box_resampling(size_in: int, size_out: int) -> torch.Tensor:
    """Pillow's BOX filter as a (size_out, size_in) matrix: each output pixel averages the input pixels whose
    centres fall inside its footprint."""
    scale = size_in / size_out
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    inputs = torch.arange(size_in, dtype=torch.float64) + 0.5
    t = (inputs.view(1, -1) - centres.view(-1, 1)) / max(scale, 1.0)
    inside = ((t >= -0.5) & (t < 0.5)).double()
    return (inside / inside.sum(1, keepdim=True)).float()


def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Down to this share of the side with a box filter, and back up with the same filter."""
    share = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = x.shape[-2:]
    small_h, small_w = int(h * share), int(w * share)
    down_h, down_w = _box_resampling(h, small_h), _box_resampling(w, small_w)
    up_h, up_w = _box_resampling(small_h, h), _box_resampling(small_w, w)
    small = down_h @ x @ down_w.T
    return up_h @ small @ up_w.T


def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pillow's encoder and decoder, as in the original (torchvision's are deprecated)."""
    quality = (80, 65, 58, 50, 40)[severity - 1]
    out = []
    for pixels in to_uint8(x).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            out.append(torch.from_numpy(np.array(decoded.convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255


# the order of the CIFAR-10-C release and of the paper's figures: noise, blur, weather, digital
CORRUPTIONS = {
    f.__name__: f
    for f in (gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow,
              frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)
}  # fmt: skip
SEVERITIES = (1, 2, 3, 4, 5)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> the same images under one corruption, uint8 like CIFAR-10-C's files.
    The generator is seeded per corruption and severity, so any subset of the table gives the same images."""
    generator = torch.Generator().manual_seed(seed * 1_000 + list(CORRUPTIONS).index(name) * 10 + severity)
    return to_uint8(CORRUPTIONS[name](images.float() / 255, severity, generator))
