"""Augmentation presets, applied to uint8 batches on the training device; the teacher sees the augmented batch.

- ``none``: the images as they are.
- ``standard``: a random horizontal flip, and a random crop: below 64 px a
  shift of up to an eighth of the side (pad-and-crop, reflecting the border),
  at 64 px and up a random resized crop (8-100% of the area, aspect 3/4-4/3).
- ``strong``: ``standard``, then TrivialAugment (torchvision.transforms.v2)
  on each image, then MixUp or CutMix (v2, one of them per batch) on the
  normalised batch, whose labels become the mixed one-hot targets.

The crops and flips are one batched affine warp with per-image parameters
(what ``trainer.distort`` does for self-distillation). torchvision's v2
transforms draw one set of parameters a call, so a batched call would crop
every image alike, and a call per image costs more than the student's step
on 32 px images (CPU, measured: 86 ms for 128 CIFAR images, the resnet8
step about 70 ms). TrivialAugment has no batched form and runs per image.

``CachedViews`` is the FKD-style alternative to running the teacher every
step: the teacher's logits for ``views`` seeded augmentations of every
training image are computed before training, and epoch ``e`` trains on view
``e % views`` (the same pixels the teacher saw, rebuilt from the seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

PRESETS = ("none", "standard", "strong")
# ``auto`` picks ``standard`` from this many epochs, ``none`` below (bench/augmentation.py; the README says why).
STANDARD_FROM_EPOCHS = 20


# Cached teacher views a ``standard`` job gets when it does not choose (and its teacher and data allow them).
DEFAULT_TEACHER_VIEWS = 8


def preset_for(epochs: int) -> str:
    """The preset a job that does not choose gets."""
    return "standard" if epochs >= STANDARD_FROM_EPOCHS else "none"

# At this side and above, ``standard`` crops a random area and resizes it back (ImageNet-style); below, it shifts.
RESIZED_CROP_FROM = 64


@dataclass(frozen=True)
class Augmentation:
    preset: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"augmentation must be one of {', '.join(PRESETS)}")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (MixUp/CutMix): the labels become soft, one teacher output per image is gone."""
        return self.preset == "strong"

    def images(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 N x C x H x W -> an augmented uint8 batch of the same shape (``generator`` seeds the crops and flips)."""
        if self.preset == "none":
            return batch
        out = crop_and_flip(batch, generator)
        if self.preset == "strong":
            trivial = v2.TrivialAugmentWide()
            out = torch.stack([trivial(image) for image in out])
        return out

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix of a normalised batch under ``strong``: (mixed batch, soft targets N x classes)."""
        if not self.mixes or len(x) < 2:
            return x, labels
        mixer = v2.RandomChoice([v2.MixUp(num_classes=self.num_classes), v2.CutMix(num_classes=self.num_classes)])
        return mixer(x, labels)


def crop_and_flip(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``standard``'s crop and flip, each image its own, in one warp (bilinear; a shift is whole pixels, exact)."""
    n, _, h, w = batch.shape
    return _warp(batch, _draw_crops(n, h, w, generator))


def _draw_crops(n: int, h: int, w: int, generator: torch.Generator | None) -> tuple[torch.Tensor, str]:
    """Per image, the affine map (n x 2 x 3, grid units) of a random crop and flip; and the padding it needs."""
    g = generator
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731  (on the CPU: the generator's device)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    if min(h, w) >= RESIZED_CROP_FROM:
        # Area share and aspect ratio as torchvision's RandomResizedCrop draws them (log-uniform aspect), clamped to fit.
        area = 0.08 + 0.92 * rand(n)
        aspect = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * rand(n))
        sx = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / aspect).clamp(max=1.0)
        tx, ty = (1 - sx) * (2 * rand(n) - 1), (1 - sy) * (2 * rand(n) - 1)  # grid units: the crop stays inside
        padding = "border"
    else:
        pad_x, pad_y = w // 8, h // 8
        shift_x = torch.randint(-pad_x, pad_x + 1, (n,), generator=g)
        shift_y = torch.randint(-pad_y, pad_y + 1, (n,), generator=g)
        sx, sy = torch.ones(n), torch.ones(n)
        tx, ty = 2 * shift_x / w, 2 * shift_y / h
        padding = "reflection"
    zero = torch.zeros(n)
    return torch.stack([torch.stack([sx * flip, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1), padding


def _warp(batch: torch.Tensor, crops: tuple[torch.Tensor, str]) -> torch.Tensor:
    theta, padding = crops
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    warped = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8)


class CachedViews:
    """Seeded augmented views of a split of ``samples`` images: view ``v`` of image ``i`` is the same pixels
    whenever it is rebuilt, in any batch. Each view's crops are drawn once, for every image (24 bytes each)."""

    def __init__(self, augmentation: Augmentation, views: int, seed: int, samples: int) -> None:
        if augmentation.preset != "standard":
            raise ValueError(f"cached teacher views take views of the standard preset, not {augmentation.preset} "
                             "(strong mixes images: one teacher output per image is gone)")
        if views < 1:
            raise ValueError("views must be 1 or more")
        self.augmentation, self.views, self.seed, self.samples = augmentation, views, seed, samples
        self._crops: dict[tuple[int, int, int], tuple[torch.Tensor, str]] = {}

    def images(self, batch: torch.Tensor, index: torch.Tensor, view: int) -> torch.Tensor:
        """View ``view`` of the images at ``index`` (their indices in the split), in one warp."""
        _, _, h, w = batch.shape
        key = (view, h, w)
        if key not in self._crops:
            self._crops[key] = _draw_crops(self.samples, h, w, torch.Generator().manual_seed(self.seed * 1_000_003 + view))
        theta, padding = self._crops[key]
        return _warp(batch, (theta[index.cpu()], padding))
