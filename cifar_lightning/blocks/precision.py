"""What the hardware offers: the trainer's default precision (16-bit mixed where the hardware computes in 16 bits
natively, else fp32), and the device that evaluate, predict and export's checks predict on."""

import torch
from omegaconf import OmegaConf

from cifar_lightning.blocks.errors import UserError


def fastest(accelerator: str) -> str:
    """bf16-mixed on a GPU that has bf16 (no loss scaling needed) and on a CPU with AVX-512 BF16 or AMX
    instructions (faster than fp32 there: docs/results.md); fp16 with loss scaling on older GPUs. Elsewhere fp32:
    a CPU without those instructions emulates bf16, slower than fp32. Weights, optimizer state and checkpoints
    stay fp32 under every mixed precision."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    capabilities = torch.cpu.get_capabilities()  # what cpuinfo detects at run time
    if accelerator in ("auto", "cpu") and (capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")):
        return "bf16-mixed"
    return "32-true"


def register_resolver() -> None:
    """`${fastest_precision:${.accelerator}}` in configs/trainer/default.yaml: resolved on the machine that
    runs, so a config saved on a GPU machine resumes in fp32 on a CPU without bf16, and the other way round."""
    OmegaConf.register_new_resolver("fastest_precision", fastest, replace=True)


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "xpu")


def inference_device(accelerator: str) -> torch.device:
    """The device of `accelerator` as Lightning's Trainer names them (trainer.accelerator of evaluate.yaml and
    predict.yaml): auto (torch's current accelerator, e.g. a CUDA GPU, when there is one, else the CPU), cpu, or
    gpu/cuda/mps/xpu. One device: inference needs no Trainer (another GPU than the first: CUDA_VISIBLE_DEVICES).
    Raises UserError for a name not in ACCELERATORS, or an accelerator this machine does not have."""
    if accelerator not in ACCELERATORS:
        known = ", ".join(ACCELERATORS)
        raise UserError(f"trainer.accelerator={accelerator} is not an accelerator: use one of {known}")
    current = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator == "cpu" or (accelerator == "auto" and current is None):
        return torch.device("cpu")
    if accelerator == "auto" or (current is not None and accelerator in ("gpu", current.type)):
        assert current is not None
        return current
    raise UserError(
        f"trainer.accelerator={accelerator}: this machine has {current.type if current else 'no accelerator'}; "
        "use trainer.accelerator=auto or cpu"
    )
