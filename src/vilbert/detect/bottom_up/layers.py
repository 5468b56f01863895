"""The bottom-up detector's building blocks: frozen BN, conv + norm, the Caffe-style ResNet.

Module and attribute names are the public port's (transformers `examples/research_projects/lxmert/
modeling_frcnn.py`, itself detectron2's), so its `pytorch_model.bin` and py-bottom-up-attention's
detectron2 `.pkl` map onto ours key for key.

Letters: N images, C channels, H, W height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms (buffers: nothing here trains).

    Computed by `F.batch_norm` in inference mode, the op the port's `nn.BatchNorm2d` runs in eval.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Conv2dNorm(nn.Conv2d):
    """A bias-free conv followed by its frozen norm, stored as `<conv>.weight` and `<conv>.norm.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max pool (Caffe's: no padding, ceil mode)."""

    def __init__(self, out_channels: int, caffe_maxpool: bool, eps: float) -> None:
        super().__init__()
        self.conv1 = Conv2dNorm(3, out_channels, 7, stride=2, padding=3, eps=eps)
        self.caffe_maxpool = caffe_maxpool

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        if self.caffe_maxpool:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, *, stride: int, num_groups: int,
                 stride_in_1x1: bool, dilation: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.shortcut = (Conv2dNorm(in_channels, out_channels, 1, stride=stride, eps=eps)
                         if in_channels != out_channels else None)
        # MSRA/Caffe ResNets put the stride in the first 1x1 conv; later ones in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, eps=eps)
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
                                dilation=dilation, groups=num_groups, eps=eps)
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


def make_stage(num_blocks: int, first_stride: int, in_channels: int, bottleneck_channels: int, out_channels: int,
               *, num_groups: int, stride_in_1x1: bool, eps: float) -> nn.Sequential:
    blocks = []
    for i in range(num_blocks):
        blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck_channels, stride=first_stride if i == 0 else 1,
                                      num_groups=num_groups, stride_in_1x1=stride_in_1x1, eps=eps))
        in_channels = out_channels
    return nn.Sequential(*blocks)


class ResNetC4(nn.Module):
    """Stem + res2..res4: images [N, 3, H, W] -> res4 features [N, 4 * res2_out, ~H/16, ~W/16]."""

    def __init__(self, stage_blocks: list[int], *, stem_out_channels: int, res2_out_channels: int,
                 width_per_group: int, num_groups: int, stride_in_1x1: bool, caffe_maxpool: bool, eps: float) -> None:
        super().__init__()
        self.stem = BasicStem(stem_out_channels, caffe_maxpool, eps)
        in_channels, out_channels = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        for idx, num_blocks in enumerate(stage_blocks):
            stage = make_stage(num_blocks, 1 if idx == 0 else 2, in_channels, bottleneck, out_channels,
                               num_groups=num_groups, stride_in_1x1=stride_in_1x1, eps=eps)
            self.add_module(f"res{idx + 2}", stage)
            in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.res4(self.res3(self.res2(x)))


class BufferList(nn.Module):
    """Tensors stored as buffers "0", "1", ... (the port keeps its cell anchors under these names)."""

    def __init__(self, tensors: list[Tensor]) -> None:
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t)

    def __getitem__(self, i: int) -> Tensor:
        return getattr(self, str(i))
