"""Architecture registry for teachers (state_dict uploads) and students.

Every builder takes ``num_classes`` and ``in_channels`` so a student follows
its teacher. Small nets are for 28-32 px inputs; torchvision classifiers are
adapted to the channel count by swapping their first convolution. Any other
name timm knows (``timm.list_models()``: MobileNetV4, EfficientViT, FastViT,
RepViT, GhostNet, ConvNeXt-Atto, ...) is built by timm, untrained: nothing is
ever downloaded. A registry name wins where both have one (``resnet18`` is
torchvision's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torchvision
from torch import nn

Builder = Callable[[int, int], nn.Module]
_REGISTRY: dict[str, Builder] = {}


class UnknownArchitectureError(ValueError):
    """The name is not in the registry."""


def register(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return decorator


def architectures() -> list[str]:
    """The registry's own names (timm's are listed by ``timm.list_models()``)."""
    return sorted(_REGISTRY)


@functools.cache
def timm_architectures() -> frozenset[str]:
    """timm's model names, exactly (no pretrained tags, no ``hf-hub:`` or ``local-dir:`` prefixes: nothing to fetch)."""
    import timm  # a second or so: only when a name is not the registry's

    return frozenset(timm.list_models())


def is_known(name: str) -> bool:
    return name in _REGISTRY or name in timm_architectures()


def unknown_message(name: str) -> str:
    return (f"unknown architecture {name!r}; known: {', '.join(architectures())}, "
            f"or any of timm's {len(timm_architectures())} models (timm.list_models())")


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """Build a freshly initialised model: the registry's, else timm's.

    ``image_size``: the input's height and width, for timm models built for one size (ViTs, EfficientFormer);
    the others take any.
    """
    if not 1 < num_classes <= 100_000 or in_channels not in (1, 3):
        raise ValueError(f"need 2+ classes and 1 or 3 channels, got {num_classes}, {in_channels}")
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes, in_channels)
    if name in timm_architectures():
        return _timm_model(name, num_classes, in_channels, image_size)
    raise UnknownArchitectureError(unknown_message(name))


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: int | None) -> nn.Module:
    import timm

    options = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if image_size is not None:
        try:  # a model with a fixed input size takes img_size; timm's other constructors refuse the keyword
            return timm.create_model(name, img_size=image_size, **options)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **options)


def head_parameters(model: nn.Module) -> set[str]:
    """The state_dict keys of the layer that produces the logits: what a pretrained start for another class
    count re-initialises. timm names its head in ``pretrained_cfg``; elsewhere it is the last Linear or Conv2d."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    if not names:
        last = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        names = last[-1:]
    return {f"{n}.{p}" for n in names for p, _ in model.get_submodule(n).named_parameters()}


# ----------------------------------------------------------------- LeNet-5


class LeNet5(nn.Module):
    """LeCun et al. (1998), with ReLU and max-pooling; any 28-32 px input.

    ``width`` scales every layer: 1.0 is LeNet-5 (6-16 conv channels,
    120-84 hidden), 0.5 is LeNet-5-half, the usual KD student for MNIST.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = round(6 * width), round(16 * width)
        h1, h2 = round(120 * width), round(84 * width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        # Adaptive pooling lets 28 px (MNIST) and 32 px (CIFAR) inputs share it.
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 25, h1),
            nn.ReLU(inplace=True),
            nn.Linear(h1, h2),
            nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register("lenet5")
def lenet5(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, width=1.0)


@register("lenet5_half")
def lenet5_half(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, width=0.5)


class ShallowCNN(nn.Sequential):
    """Two 3x3 conv-ReLU-max-pool layers of 16 channels and a 256-unit head: the first version's CIFAR student,
    the smallest student worth timing against a CIFAR teacher. Any input size (pooled to 8x8 before the head)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(8), nn.Flatten(),
            nn.Linear(16 * 8 * 8, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes),
        )


register("shallow_cnn")(ShallowCNN)


# ------------------------------------------------- small CNNs with BatchNorm


class SmallCNN(nn.Sequential):
    """Three 3x3 conv-BatchNorm-ReLU blocks (``width``, 2x, 4x channels), global pooling, a linear head.

    The student for data-free distillation from a BatchNorm teacher: issue 19's
    MNIST CNN (98.25%) taught ``cnn_bn_16`` to 96.2% from generated images
    alone, where LeNet-5-half, without BatchNorm, reached 53-75% (engine only,
    200 iterations). Any input size.
    """

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        layers: list[nn.Module] = []
        for i, channels in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
            in_channels = channels
        super().__init__(*layers, nn.Flatten(), nn.Linear(in_channels, num_classes))


for _width in (8, 16, 32):
    register(f"cnn_bn_{_width}")(
        lambda num_classes, in_channels, width=_width: SmallCNN(num_classes, in_channels, width)
    )


# ----------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016), section 4.2: 6n+2 layers, 16-32-64 channels, 32 px."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


for _depth in (8, 14, 20, 32, 56):
    register(f"resnet{_depth}_cifar")(
        lambda num_classes, in_channels, depth=_depth: CifarResNet(depth, num_classes, in_channels)
    )


# ---------------------------------------------------- torchvision classifiers


def _first_conv_for_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first Conv2d for one with ``in_channels`` inputs (weights are fresh)."""
    if in_channels == 3:
        return model
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        bias=child.bias is not None,
                    ),
                )
                return model
    raise ValueError("model has no Conv2d to adapt")


for _name in (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
):
    register(_name)(
        lambda num_classes, in_channels, name=_name: _first_conv_for_channels(
            torchvision.models.get_model(name, weights=None, num_classes=num_classes), in_channels
        )
    )
