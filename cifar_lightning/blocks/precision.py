"""The trainer's default precision: 16-bit mixed where the hardware computes in 16 bits natively, else fp32."""

import torch
from omegaconf import OmegaConf


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
