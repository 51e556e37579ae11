from torch import nn


class MLP(nn.Sequential):
    """A fully connected baseline on the flattened pixels."""

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 3 * 32 * 32,
        hidden: tuple[int, ...] = (512, 512),
        dropout: float = 0.5,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, num_classes))
