"""Model architectures and the registry the CLI names them by.

``compact`` is sized for the pipeline's CPU throughput target (a fraction of JPEG-decode cost),
``compact-fine`` adds a full-resolution first conv (tested, not better: see the model card);
``resnet18`` is torchvision's ResNet-18 adapted to 64-pixel inputs (3x3 stride-1 stem, no max
pool; 2.2 billion multiply-adds against compact's 6.3 million); ``resnet18-std`` keeps
torchvision's stem (148 million at 64 pixels, 592 million at 128). All return raw logits
``(n, n_outputs)``: one per answer of the tree (37 for GZ2, the default).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from galaxy_infer.schema import GZ2


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, BatchNorm (folded into the conv at ONNX export), ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class CompactCNN(nn.Module):
    """Strided 3x3 conv stages, global average and max pooling, one linear head.

    ``stages`` lists (channels as a multiple of ``width``, stride) per conv; the default spends
    its channels where the maps are small (8x8 and 4x4), which is cheap on CPU.
    """

    DEFAULT_STAGES = ((1, 2), (2, 2), (2, 1), (4, 2), (4, 1), (8, 2), (8, 1))

    def __init__(self, in_channels: int = 3, width: int = 12, n_outputs: int = GZ2.n_answers,
                 dropout: float = 0.1, stages: tuple[tuple[int, int], ...] = DEFAULT_STAGES) -> None:
        super().__init__()
        layers, c = [], in_channels
        for multiple, stride in stages:
            layers.append(conv_bn(c, multiple * width, stride))
            c = multiple * width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * c, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def resnet18(in_channels: int = 3, width: int = 64, n_outputs: int = GZ2.n_answers, dropout: float = 0.1,
             small_input_stem: bool = True) -> nn.Module:
    """torchvision ResNet-18 with a dropout + linear head; ``small_input_stem`` replaces its 7x7
    stride-2 conv and max pool by one 3x3 stride-1 conv, so a 64-pixel cutout keeps 8x8 maps in
    the last stage instead of 2x2."""
    from torchvision.models import resnet18 as torchvision_resnet18

    if width != 64:
        raise ValueError("resnet18 has a fixed width of 64")
    model = torchvision_resnet18(weights=None, num_classes=n_outputs)
    if small_input_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, n_outputs))
    return model


def compact_fine(**kwargs) -> CompactCNN:
    """``compact`` with a stride-1 first conv that sees the input at full resolution (~1.45x the cost)."""
    return CompactCNN(stages=((1, 1), (1, 2), (2, 2), (2, 1), (4, 2), (4, 1), (8, 2), (8, 1)), **kwargs)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "compact": CompactCNN,
    "compact-fine": compact_fine,
    "resnet18": resnet18,
    "resnet18-std": partial(resnet18, small_input_stem=False),
}


def build_model(name: str, **kwargs) -> nn.Module:
    """A registered architecture by name (see :data:`REGISTRY`)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)
