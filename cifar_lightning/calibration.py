"""Temperature scaling (Guo et al., 2017): one number T that divides the logits so that softmax probabilities
match how often the model is right. Fitted on validation logits; argmax, and so accuracy, do not change."""

import lightning as L
import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T), by LBFGS on log T (which keeps
    T positive and the problem well scaled)."""
    logits, log_t = logits.detach().double(), torch.zeros((), dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp())


def fit_on_validation(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None = None
) -> float:
    """The temperature of `model` (the weights of `ckpt_path`, if given) fitted on the data's validation split, with
    the model's own test-time augmentation, through Lightning's predict loop."""
    batches = trainer.predict(model, dataloaders=datamodule.loader("val"), ckpt_path=ckpt_path)
    return fit_temperature(torch.cat([b[0] for b in batches]).cpu(), torch.cat([b[1] for b in batches]).cpu())
