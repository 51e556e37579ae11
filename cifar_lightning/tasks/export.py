"""Checkpoint -> ONNX model, verified against PyTorch with onnxruntime on real images."""

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from cifar_lightning.checkpoints import evaluation_data, load_model, resolve, run_dir_of
from cifar_lightning.checks import check_option
from cifar_lightning.errors import UserError

FORMATS = ("onnx",)


class RawImagesToLogits(torch.nn.Module):
    """The exported graph takes uint8 images as they are stored, so users need not know the normalisation, and
    gives logits divided by the calibration temperature: their softmax is the calibrated probabilities."""

    def __init__(self, model: L.LightningModule):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.model.normalize(images)) / self.model.temperature


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not supported: use {', '.join(FORMATS)}")
    check_option("check_images", cfg.check_images, int, least=1)
    check_option("tolerance", cfg.tolerance, float, least=0)
    try:
        import onnxruntime
    except ImportError:
        raise UserError('onnxruntime is not installed: pip install -e ".[export]"') from None
    checkpoint = resolve(str(cfg.ckpt), Path(cfg.outputs))
    model = load_model(checkpoint)
    run_dir = run_dir_of(checkpoint)
    out = Path(cfg.output) if cfg.output else run_dir / "model.onnx"

    datamodule = evaluation_data(cfg.get("data"), run_dir)
    datamodule.setup("test")
    if cfg.split not in datamodule.splits:
        raise UserError(f"the data in {datamodule.root} has no {cfg.split} split to check the export on")
    images = datamodule.splits[cfg.split].images[: cfg.check_images]

    graph = RawImagesToLogits(model).eval()
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(
        graph,
        (images[:2],),
        str(tmp),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with torch.no_grad():
        expected = graph(images).numpy()
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    max_diff = float(abs(got - expected).max())
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    print(
        f"checked on {len(images)} {cfg.split} images: max abs logit difference {max_diff:.2e}, "
        f"top-1 agreement {agreement:.2%}"
    )
    if max_diff > cfg.tolerance:
        tmp.unlink()
        raise UserError(
            f"the ONNX model disagrees with PyTorch: max abs logit difference {max_diff:.2e} > "
            f"tolerance={cfg.tolerance} (top-1 agreement {agreement:.2%}); nothing written"
        )
    tmp.replace(out)
    print(f"wrote {out}")
    return out
