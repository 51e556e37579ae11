"""One file per network. Each takes `num_classes` (filled in from the data) and maps normalised
(N, 3, H, W) float images to (N, num_classes) logits. A model's YAML in configs/model/ names its class."""
