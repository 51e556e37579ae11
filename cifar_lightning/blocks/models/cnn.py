from torch import nn


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CNN(nn.Sequential):
    """The original project's ConvNet: three conv-BN-ReLU blocks, max-pool after the first two,
    global average pool, linear classifier."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)):
        layers: list[nn.Module] = []
        c_in = 3
        for i, width in enumerate(widths):
            layers.append(conv_bn_relu(c_in, width))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
