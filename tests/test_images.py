"""read_image shows every mode, bit depth and EXIF orientation as an image viewer does: upright 8-bit RGB.

Each case writes an image and its upright 8-bit RGB twin (computed here with numpy from the stored values, not
with Pillow's conversions) and compares read_image's pixels with the twin's.
"""

import csv

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import ExifTags, Image

from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.datasets import make_synthetic, read_image

SIZE = 6  # square, so read_image does not resize and pixels compare one to one
WHITE = 255.0


def shown(a: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels a (H, W, ...) tagged with an EXIF orientation (EXIF 2.3, tag 274)."""
    return {
        1: a,
        2: a[:, ::-1],
        3: a[::-1, ::-1],
        4: a[::-1],
        5: a.swapaxes(0, 1),
        6: np.rot90(a, -1),
        7: a[::-1, ::-1].swapaxes(0, 1),
        8: np.rot90(a, 1),
    }[orientation]


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ExifTags.Base.Orientation] = orientation
    return tags


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] / 255.0
    return rgb * a + WHITE * (1 - a)


def grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[..., None].astype(np.float64), 3, axis=-1)


# Each variant: rng -> (image as stored, its upright twin as float RGB (H, W, 3), file suffix, tolerance).
def mode_1(rng):
    bits = rng.integers(0, 2, (SIZE, SIZE)).astype(bool)
    return Image.fromarray(bits), grey(bits * 255), ".png", 0


def mode_l(rng):
    v = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    return Image.fromarray(v), grey(v), ".png", 0


def mode_l_transparent_level(rng):
    v = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    v[0, :3] = 7
    img = Image.fromarray(v)
    img.info["transparency"] = 7
    return img, np.where(v[..., None] == 7, WHITE, grey(v)), ".png", 0


def mode_la(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 2), dtype=np.uint8)
    return Image.fromarray(v, "LA"), over_white(grey(v[..., 0]), v[..., 1]), ".png", 1


def mode_p(rng):
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    return img, palette[index].astype(np.float64), ".png", 0


def mode_p_transparent_index(rng):
    img, rgb, _, _ = mode_p(rng)
    index = np.asarray(img)
    img.info["transparency"] = int(index[0, 0])
    return img, np.where(index[..., None] == index[0, 0], WHITE, rgb), ".png", 0


def mode_p_alpha_palette(rng):
    img, rgb, _, _ = mode_p(rng)
    alpha = rng.integers(0, 256, 256, dtype=np.uint8)
    img.info["transparency"] = alpha.tobytes()
    return img, over_white(rgb, alpha[np.asarray(img)]), ".png", 1


def mode_rgb(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(v), v.astype(np.float64), ".png", 0


def mode_rgb_webp(rng):
    img, rgb, _, _ = mode_rgb(rng)
    return img, rgb, ".webp", 0


def mode_rgb_transparent_colour(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    v[1, :2] = (1, 2, 3)
    img = Image.fromarray(v)
    img.info["transparency"] = (1, 2, 3)
    return img, np.where((v == (1, 2, 3)).all(-1, keepdims=True), WHITE, v), ".png", 0


def mode_rgba(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    v[0, 0, 3], v[0, 1, 3] = 0, 255  # fully transparent, fully opaque
    return Image.fromarray(v), over_white(v[..., :3].astype(np.float64), v[..., 3]), ".png", 1


def mode_cmyk(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 4)).astype(np.float64)
    rgb = (255 - v[..., :3]) * (255 - v[..., 3:]) / 255
    return Image.fromarray(v.astype(np.uint8), "CMYK"), rgb, ".tif", 1


def mode_ycbcr(rng):
    v = rng.integers(0, 256, (SIZE, SIZE, 3))
    y, cb, cr = (v[..., i] - (0, 128, 128)[i] for i in range(3))
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)  # JFIF
    return Image.fromarray(v.astype(np.uint8), "YCbCr"), rgb.clip(0, 255), ".tif", 1


def mode_lab_neutral(rng):
    light = rng.integers(0, 256, (SIZE, SIZE))
    lab = np.stack([light, 0 * light, 0 * light], axis=-1).astype(np.uint8)
    lstar = light * 100 / 255  # CIE L*, a* = b* = 0: a grey; its sRGB level follows from luminance alone
    y = np.where(lstar > 8, ((lstar + 16) / 116) ** 3, lstar / 903.3)
    srgb = np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)
    return Image.frombytes("LAB", (SIZE, SIZE), lab.tobytes()), grey(srgb * 255), ".tif", 1


def sixteen_bit(rng):
    return rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)


def mode_i16_png(rng):
    v = sixteen_bit(rng)
    return Image.fromarray(v), grey(v >> 8), ".png", 0


def mode_i16_png_transparent_level(rng):
    v = sixteen_bit(rng)
    v[2, :2] = 4242
    img = Image.fromarray(v)
    img.info["transparency"] = 4242
    return img, np.where(v[..., None] == 4242, WHITE, grey(v >> 8)), ".png", 0


def mode_i16_tiff(rng):
    v = sixteen_bit(rng)
    return Image.fromarray(v), grey(v >> 8), ".tif", 0


def mode_i16b_tiff(rng):
    v = sixteen_bit(rng)
    img = Image.fromarray(v.astype(">u2"))
    assert img.mode == "I;16B"
    return img, grey(v >> 8), ".tif", 0


def mode_i_16bit_range(rng):
    v = sixteen_bit(rng).astype(np.int32)
    return Image.fromarray(v), grey(v >> 8), ".tif", 0


def mode_i_wide_range(rng):
    v = rng.integers(-70000, 200000, (SIZE, SIZE)).astype(np.int32)
    return Image.fromarray(v), grey((v - v.min()) * 255 / (v.max() - v.min())), ".tif", 1


def mode_f_unit_range(rng):
    v = rng.random((SIZE, SIZE)).astype(np.float32)
    return Image.fromarray(v), grey(v * 255.0), ".tif", 1


def mode_f_wide_range(rng):
    v = rng.uniform(-3, 7, (SIZE, SIZE)).astype(np.float32)
    return Image.fromarray(v), grey((v - v.min()) * 255 / (v.max() - v.min())), ".tif", 1


VARIANTS = [
    mode_1,
    mode_l,
    mode_l_transparent_level,
    mode_la,
    mode_p,
    mode_p_transparent_index,
    mode_p_alpha_palette,
    mode_rgb,
    mode_rgb_webp,
    mode_rgb_transparent_colour,
    mode_rgba,
    mode_cmyk,
    mode_ycbcr,
    mode_lab_neutral,
    mode_i16_png,
    mode_i16_png_transparent_level,
    mode_i16_tiff,
    mode_i16b_tiff,
    mode_i_16bit_range,
    mode_i_wide_range,
    mode_f_unit_range,
    mode_f_wide_range,
]


def write_pair(folder, name, img, twin, suffix, orientation, **save):
    """The image with an EXIF orientation, and its upright twin as an 8-bit RGB PNG; both paths."""
    path, twin_path = folder / f"{name}{suffix}", folder / f"{name}-twin.png"
    img.save(path, exif=exif(orientation), **({"lossless": True} if suffix == ".webp" else {}), **save)
    Image.fromarray(np.rint(twin).clip(0, 255).astype(np.uint8), "RGB").save(twin_path)
    return path, twin_path


def pixels(path) -> torch.Tensor:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda f: f.__name__.removeprefix("mode_"))
def test_every_mode_and_orientation_reads_as_the_upright_8bit_twin(tmp_path, variant):
    img, rgb, suffix, tolerance = variant(np.random.default_rng(0))
    wrong = []
    for orientation in range(1, 9):
        path, twin = write_pair(tmp_path, f"o{orientation}", img, shown(rgb, orientation), suffix, orientation)
        got = read_image(path, SIZE)
        assert got.dtype == torch.uint8 and got.shape == (3, SIZE, SIZE)
        if (got.int() - pixels(twin).int()).abs().max() > tolerance:
            wrong.append(orientation)
    assert not wrong, f"{variant.__name__}: orientations {wrong} differ from the upright twin"


def test_a_16bit_grey_png_is_not_almost_white(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # black to white
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = read_image(tmp_path / "ramp.png", 32)
    assert abs(got.float().mean() - 127.5) < 1
    assert torch.equal(got[0], torch.from_numpy(ramp >> 8).to(torch.uint8)) and torch.equal(got[0], got[2])


@pytest.mark.parametrize("suffix, save", [(".tif", {}), (".tif", {"compression": "tiff_lzw"}), (".png", {})])
def test_sideways_orientations_of_a_wide_image_come_out_tall(tmp_path, suffix, save):
    """Orientations 5-8 swap width and height; the picture is then resized like any other."""
    stored = np.random.default_rng(1).integers(0, 256, (4, 10), dtype=np.uint8)  # wide
    for orientation in range(5, 9):
        path, twin = write_pair(tmp_path, f"o{orientation}", Image.fromarray(stored), grey(shown(stored, orientation)),
                                suffix, orientation, **save)  # fmt: skip
        assert torch.equal(read_image(path, 8), read_image(twin, 8)), (suffix, save, orientation)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_a_jpeg_tagged_rotate_90_reads_as_the_same_jpeg_turned_upright(tmp_path, mode):
    stored = np.random.default_rng(2).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(stored).convert(mode).save(tmp_path / "photo.jpg", exif=exif(6), quality=95)
    with Image.open(tmp_path / "photo.jpg") as decoded:  # the same decoder, without looking at the tag
        assert decoded.mode == mode
        Image.fromarray(np.rot90(np.asarray(decoded.convert("RGB")), -1)).save(tmp_path / "twin.png")
    assert torch.equal(read_image(tmp_path / "photo.jpg", 16), read_image(tmp_path / "twin.png", 16))


def test_a_folder_tree_reads_rotated_and_16bit_images_upright(tmp_path):
    rng = np.random.default_rng(3)
    expected = []  # (label, upright uint8 (3, H, W))
    for label, name in enumerate(("cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i, orientation in enumerate((6, 8, 3, 5)):
            if i % 2:  # 16-bit grey
                stored = rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
                twin = grey(stored >> 8).astype(np.uint8)
            else:
                stored = twin = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(stored).save(tmp_path / "train" / name / f"{i}.png", exif=exif(orientation))
            expected.append((label, torch.from_numpy(shown(twin, orientation).copy()).permute(2, 0, 1)))
    dm = ImageDataModule(source="folder", root=str(tmp_path), val_size=0, batch_size=2, image_size=SIZE)
    dm.setup("fit")
    train = dm.splits["train"]
    assert len(train) == len(expected)
    for label, want in expected:
        assert any(lab == label and torch.equal(img, want) for img, lab in zip(train.images, train.labels)), label


def test_predict_gives_a_rotated_photo_and_its_upright_twin_the_same_answer(synthetic_run, tmp_path):
    data = make_synthetic(num_train=20, num_test=0)
    upright = data.train_images[0].permute(1, 2, 0).numpy()  # a training picture: the net has a class for it
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "rotated.jpg", exif=exif(6), quality=95)
    with Image.open(tmp_path / "rotated.jpg") as decoded:  # the upright twin of exactly the decoded pixels
        Image.fromarray(np.rot90(np.asarray(decoded), -1)).save(tmp_path / "upright.png")
    out = tmp_path / "out.csv"
    result = run_script("predict.py", f"ckpt={synthetic_run}", f"images={tmp_path}/*", f"csv={out}", "tta=0")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out) as f:
        rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(f)}
    rotated, twin = rows["rotated.jpg"], rows["upright.png"]
    assert rotated["class_1"] == twin["class_1"]
    assert [rotated[f"prob_{k}"] for k in (1, 2, 3)] == [twin[f"prob_{k}"] for k in (1, 2, 3)]
