"""Feature extractors: `mlp` for tabular rows, `cnn` and `resnet18` for images.

Every backbone maps a batch to features [B, D] and exposes `out_dim`; heads
are added by the methods.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

# At or below this input size ResNet-18 gets the small-input stem (3x3 stride-1
# convolution, no max-pool) so 32-64 px images are not downsampled to nothing.
SMALL_INPUT_PX = 64
BACKBONES = ("auto", "mlp", "cnn", "resnet18")


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 256, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Four conv blocks and global pooling: a fast image backbone for tests and CPU suites."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                blocks.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet18Features(nn.Module):
    """torchvision ResNet-18 without its classifier; random init unless `pretrained` names a local file."""

    def __init__(self, in_channels: int = 3, image_size: int = 224, pretrained: str = ""):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if pretrained:
            load_local_weights(net, pretrained)
        if image_size <= SMALL_INPUT_PX:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        if in_channels != 3:
            # One-channel inputs (e.g. RNFLT maps): same layer shape, new input width.
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_local_weights(net: nn.Module, path: str) -> None:
    """Load a state dict from a local file (never a download); keys that do not fit are reported."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(p)!r} not found; give a local .pth path (nothing is downloaded)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"pretrained weights {str(p)!r} do not fit ResNet-18: unexpected keys {unexpected[:5]}")


def build_backbone(name: str, input_shape: tuple[int, ...], kind: str, hidden: int = 256, pretrained: str = "") -> nn.Module:
    """The backbone `name` for inputs of `input_shape` (`auto`: mlp for tabular, resnet18 for images)."""
    if name == "auto":
        name = "mlp" if kind == "tabular" else "resnet18"
    if name == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"backbone 'mlp' needs feature vectors, got inputs of shape {input_shape}")
        return MLP(input_shape[0], hidden=hidden)
    if len(input_shape) != 3:
        raise ValueError(f"backbone {name!r} needs images [C, H, W], got inputs of shape {input_shape}")
    if name == "cnn":
        return SmallCNN(input_shape[0])
    if name == "resnet18":
        return ResNet18Features(input_shape[0], image_size=max(input_shape[1:]), pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
