"""Temperature scaling (Guo et al., 2017): one number T that divides the logits so that softmax probabilities
match how often the model is right. Fitted on validation logits; argmax, and so accuracy, do not change. The
conformal scores (conformal.py) are fitted in the same pass."""

import torch
import torch.nn.functional as F

from cifar_lightning.blocks.conformal import calibration_scores
from cifar_lightning.blocks.data import InMemoryImages
from cifar_lightning.blocks.module import ImageClassifier


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T), by LBFGS on log T (which keeps
    T positive and the problem well scaled). Logits (N, C) that classify every label right have no such T (the
    likelihood keeps rising as T falls to 0, making every prediction certain): T is then 1, uncalibrated."""
    if bool((logits.argmax(dim=1) == labels).all()):
        return 1.0
    logits, log_t = logits.detach().double(), torch.zeros((), dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp())


def fit_on_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None
) -> tuple[float, torch.Tensor]:
    """The temperature (fitted to validation `logits` (N, C) and int64 `labels` (N,), unless a `temperature` is
    given) and the conformal scores of softmax(logits / temperature) (conformal.calibration_scores): one model's or
    an ensemble's calibration, from the same validation logits."""
    fitted = fit_temperature(logits, labels) if temperature is None else temperature
    return fitted, calibration_scores((logits / fitted).softmax(dim=1), labels)


def fit_on_validation(
    model: ImageClassifier, validation: InMemoryImages, batch_size: int = 500, temperature: bool = True
) -> float:
    """Fits on a validation split's uint8 images, with the model's own test-time augmentation, in one pass, and sets
    in `model`: its temperature (when `temperature`; else it keeps its own) and its conformal scores
    (conformal.py), those of softmax(logits / temperature). Returns the temperature."""
    logits = model.predict_logits(validation.images, batch_size=batch_size)
    fitted, scores = fit_on_logits(logits, validation.labels, None if temperature else float(model.temperature))
    model.temperature.fill_(fitted)
    model.conformal_scores = scores.to(model.conformal_scores.device)
    return fitted
