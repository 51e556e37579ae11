"""The net of the fast recipe (Keller Jordan's airbench94, arXiv:2404.00498), written from its description."""

import torch
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a learned bias but no scale: the scale is redundant before GELU and the next conv."""

    def __init__(self, channels: int, eps: float = 1e-12, momentum: float = 0.4):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> GELU -> conv -> BN -> GELU; convs start as identities on their first channels."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = BatchNorm(c_out, momentum=bn_momentum)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            # identity on the first input channels: the net starts close to passing its input through
            n = min(conv.in_channels, conv.out_channels)
            torch.nn.init.dirac_(conv.weight[:n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """2x2 patch-whitening conv (frozen, from the data) -> GELU -> 3 conv groups -> maxpool 3 -> linear / 9."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        whiten_width: int = 24,
        whiten_eps: float = 5e-4,
        bn_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
        head_std: float | None = None,
    ):
        super().__init__()
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by init_from_data, never trained
        self.whiten_eps, self.logit_scale = whiten_eps, logit_scale
        self.act = nn.GELU()
        c_in, groups = whiten_width, []
        for width in widths:
            groups.append(ConvGroup(c_in, width, bn_momentum))
            c_in = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)  # 3x3 maps at this point for 32x32 inputs: maxpool 3
        self.head = nn.Linear(c_in, num_classes, bias=False)
        if head_std is not None:  # airbench94_muon: a head of unit-std weights, its logits scaled down instead
            self.head.weight.data *= head_std / self.head.weight.std()

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Whitening weights from normalised training images: the eigenvectors of the (uncentred) second-moment
        matrix of their 2x2 patches, scaled by 1/sqrt(eigenvalue + eps), and their negations."""
        c, k = images.shape[1], self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        second_moment = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_eps)[:, None]).reshape(-1, c, k, k)
        half = self.whiten.out_channels // 2
        filters = filters.flip(0)[:half]  # the directions of largest variance first
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale
