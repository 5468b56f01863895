"""ResNeXt body + FPN, with maskrcnn-benchmark's module names (`backbone.body`, `backbone.fpn`).

Legend: N images, C channels, H x W spatial size; C2..C5 stage outputs (strides 4..32),
P2..P6 FPN outputs (P6 = P5 subsampled by 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.ops import FrozenBatchNorm2d

Tensor = torch.Tensor


class Stem(nn.Module):
    """7x7/2 conv, frozen BN, ReLU, 3x3/2 max pool (stride 4 overall)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> grouped 3x3 -> 1x1 with a projection shortcut when the width changes."""

    def __init__(
        self, in_channels: int, bottleneck: int, out_channels: int, groups: int, stride: int, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                FrozenBatchNorm2d(out_channels),
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck, kernel_size=1, stride=stride_1x1, bias=False)
        self.bn1 = FrozenBatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(
            bottleneck, bottleneck, kernel_size=3, stride=stride_3x3, padding=1, groups=groups, bias=False
        )
        self.bn2 = FrozenBatchNorm2d(bottleneck)
        self.conv3 = nn.Conv2d(bottleneck, out_channels, kernel_size=1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNeXt(nn.Module):
    """Stem + layer1..layer4; returns [C2, C3, C4, C5]."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.stem = Stem(config.stem_channels)
        in_channels = config.stem_channels
        for index, blocks in enumerate(config.stage_blocks, start=1):
            factor = 2 ** (index - 1)
            bottleneck = config.num_groups * config.width_per_group * factor
            out_channels = config.res2_channels * factor
            stride = 1 if index == 1 else 2  # only the first block of a stage strides
            layers = []
            for b in range(blocks):
                layers.append(
                    Bottleneck(
                        in_channels,
                        bottleneck,
                        out_channels,
                        config.num_groups,
                        stride if b == 0 else 1,
                        config.stride_in_1x1,
                    )
                )
                in_channels = out_channels
            self.add_module(f"layer{index}", nn.Sequential(*layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            outputs.append(x)
        return outputs


class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 (`fpn_inner{i}`) and output 3x3 (`fpn_layer{i}`) convs."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            self.add_module(f"fpn_inner{i}", nn.Conv2d(c, out_channels, kernel_size=1))
            self.add_module(f"fpn_layer{i}", nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))
        self.levels = len(in_channels)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        last = getattr(self, f"fpn_inner{self.levels}")(xs[-1])
        results = [getattr(self, f"fpn_layer{self.levels}")(last)]
        for i in range(self.levels - 1, 0, -1):
            # nearest x2 upsampling: inputs are padded to a multiple of the coarsest stride
            top_down = F.interpolate(last, scale_factor=2, mode="nearest")
            last = getattr(self, f"fpn_inner{i}")(xs[i - 1]) + top_down
            results.insert(0, getattr(self, f"fpn_layer{i}")(last))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))  # P6
        return results


class Backbone(nn.Module):
    """images [N, 3, H, W] (BGR, mean-subtracted, padded) -> [P2, P3, P4, P5, P6]."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.body = ResNeXt(config)
        self.fpn = FPN(config.stage_channels, config.fpn_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(self.body(images))
