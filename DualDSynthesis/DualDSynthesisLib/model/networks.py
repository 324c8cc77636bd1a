"""The three networks of the paper: generator G (UNet), global critic D1, local discriminator D2.

Pure torch: no Slicer, Qt or vtk, so the same file trains on a GPU server and runs inside Slicer.
Every constructor validates its arguments and every ``forward`` checks the slice size with one
clear sentence, because a wrong size otherwise surfaces as an opaque shape error deep in a conv.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# The configuration and the topology facts are torch-free (architecture.py); re-exported here for callers
# that build networks.
from .architecture import (
    D2_HEADS,
    MAX_DEPTH,
    NORMS,
    ArchitectureConfig,
    D2Head,
    Norm,
    generator_receptive_field,
    local_downsampling,
    local_receptive_field,
)
from .architecture import check_positive as _check_positive

INITIAL_EXPECTED_ERROR = 0.1  # G's expected-error head starts here (normalised units), see UNetGenerator

__all__ = [
    "D2_HEADS", "MAX_DEPTH", "NORMS", "ArchitectureConfig", "GlobalCritic", "LocalDiscriminator", "UNetGenerator",
    "generator_receptive_field", "local_receptive_field",
]


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        # GroupNorm with one group normalises each sample over (C, H, W): layer norm for conv maps.
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMS)}")


def _check_input(x: torch.Tensor, channels: int, min_size: int, multiple: int, net: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{net} expects a [batch, channels, height, width] tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{net} expects {channels} input channel(s), got {x.shape[1]}")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{net} needs slices of at least {min_size}×{min_size} pixels, got {h}×{w}")
    if h % multiple or w % multiple:
        raise ValueError(f"{net} needs slice sizes divisible by {multiple}, got {h}×{w}; pad the slice first")


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNetGenerator(nn.Module):
    """G: a 2-D UNet mapping ``in_channels`` source slices to one target slice.

    ``depth`` down-samplings (max-pool) with widths ``base_width·2^i``; up-sampling is bilinear
    followed by a 3×3 conv (no transposed convs, which leave checkerboard artefacts). The output is
    linear: intensities are already normalised by the bundle's mapping, and clipping the output
    would hide out-of-range predictions. Slices must be divisible by ``2**depth``.
    """

    def __init__(
        self, in_channels: int = 1, base_width: int = 64, depth: int = 4, norm: Norm = "batch",
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        if out_channels not in (1, 2):
            raise ValueError(f"out_channels must be 1 (image) or 2 (image + expected error), got {out_channels!r}")
        _check_positive("base_width", base_width)
        _check_positive("depth", depth)
        if depth > MAX_DEPTH:
            raise ValueError(f"depth must be at most {MAX_DEPTH} (a 2^{depth} down-sampling is larger than any slice)")
        _norm_layer(norm, 1)  # validates the name
        self.in_channels, self.base_width, self.depth, self.norm = in_channels, base_width, depth, norm
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_DoubleConv(in_channels, widths[0], norm)])
        self.encoders.extend(_DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.ups = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in range(depth))
        self.decoders = nn.ModuleList(_DoubleConv(2 * widths[i], widths[i], norm) for i in range(depth))
        # Channel 0: the synthetic slice. Channel 1 (optional): log of the Laplace scale b, i.e. the
        # expected absolute error of channel 0 at that pixel (see losses.laplace_nll).
        self.out_channels = out_channels
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        if out_channels == 2:
            # Start the expected error at 0.1 (normalised units, the size of early errors) instead of
            # exp(0) = 1, which Adam would need thousands of steps to walk down from.
            with torch.no_grad():
                self.head.bias[1] = math.log(INITIAL_EXPECTED_ERROR)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    @property
    def receptive_field(self) -> int:
        """Width in pixels of the input region that can influence one output pixel."""
        return generator_receptive_field(self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.size_multiple, self.size_multiple, "the generator")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.ups[i](F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
            x = self.decoders[i](torch.cat([skips.pop(), x], dim=1))
        return self.head(x)


class GlobalCritic(nn.Module):
    """D1: the paper's global WGAN-GP critic (§2.4), one unbounded score per slice.

    Layout: 3 × (conv3×3 → norm → ReLU → max-pool 2) with 32, 64, 128 filters, one conv3×3 with
    256 filters (→ norm → ReLU), then fully connected 512 → ReLU → 128 → ReLU → 1.

    Any slice size of at least 16×16 is accepted (so the last map keeps ≥ 2×2 elements for
    per-sample normalisation): an adaptive average pool brings the 256-channel
    map to a fixed ``pool_size``×``pool_size`` grid before the first FC layer, so the FC sizes do
    not depend on the slice size.

    Normalisation: the paper uses BatchNorm, which couples the samples of a batch and so breaks
    the per-sample gradient penalty of WGAN-GP (Gulrajani et al. 2017 §4 recommend layer norm).
    The default here is therefore ``"layer"``; ``norm="batch"`` reproduces the paper's layout.
    """

    def __init__(self, in_channels: int = 1, norm: Norm = "layer", pool_size: int = 4) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("pool_size", pool_size)
        _norm_layer(norm, 1)
        self.in_channels, self.norm, self.pool_size = in_channels, norm, pool_size
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in (32, 64, 128):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                _norm_layer(norm, cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        layers += [nn.Conv2d(128, 256, 3, padding=1), _norm_layer(norm, 256), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * pool_size * pool_size, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, 16, 1, "the global critic D1")
        return self.classifier(self.pool(self.features(x)))


class LocalDiscriminator(nn.Module):
    """D2: fully convolutional local discriminator; one logit per output element.

    Three stride-2 4×4 convs (the three down-samplings) then two stride-1 3×3 convs. ``head="patch"``
    is the paper's D2: the output grid is the slice grid / 8 and each element sees a ~54-pixel
    receptive field, so its map is coarse. ``head="pixel"`` adds a decoder (U-Net discriminator,
    Schönfeld et al. CVPR 2020): three bilinear ×2 up-samplings, each followed by a 3×3 conv on the
    concatenation with the encoder map of that scale, so there is one real/fake logit per pixel and
    the map can follow the errors rather than a 1/8-grid blob. ``sigmoid(logit)`` is the
    confidence map M: how real that region looks.
    """

    def __init__(
        self, in_channels: int = 1, base_width: int = 64, norm: Norm = "batch", head: D2Head = "patch"
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("base_width", base_width)
        _norm_layer(norm, 1)
        if head not in D2_HEADS:
            raise ValueError(f"unknown D2 head {head!r}; choose one of {', '.join(D2_HEADS)}")
        self.in_channels, self.base_width, self.norm, self.head = in_channels, base_width, norm, head
        w = base_width
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),  # [0:2] → 1/2
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=norm == "none"),
            _norm_layer(norm, 2 * w),
            nn.LeakyReLU(0.2, inplace=True),  # [2:5] → 1/4
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1, bias=norm == "none"),
            _norm_layer(norm, 4 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 8 * w, 3, padding=1, bias=norm == "none"),
            _norm_layer(norm, 8 * w),
            nn.LeakyReLU(0.2, inplace=True),  # [5:11] → 1/8
        ]
        if head == "patch":
            layers.append(nn.Conv2d(8 * w, 1, 3, padding=1))  # [11]: the logits (parameter names as in v1 bundles)
        self.net = nn.Sequential(*layers)
        if head == "pixel":
            def up(cin: int, cout: int) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
                                     _norm_layer(norm, cout), nn.LeakyReLU(0.2, inplace=True))

            self.up3 = up(8 * w + 2 * w, 2 * w)  # 1/8 → 1/4, with the 1/4 encoder map
            self.up2 = up(2 * w + w, w)  # 1/4 → 1/2, with the 1/2 encoder map
            self.up1 = up(w + in_channels, w)  # 1/2 → 1, with the input
            self.out = nn.Conv2d(w, 1, 3, padding=1)

    @property
    def downsampling(self) -> int:
        """Input pixels per output element along each axis."""
        return local_downsampling(self.head)

    @property
    def receptive_field(self) -> int:
        """Width in input pixels of the region one output element sees (an upper bound for "pixel")."""
        return local_receptive_field(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, 16, 8 if self.head == "pixel" else 1, "the local discriminator D2")
        if self.head == "patch":
            return self.net(x)
        f1 = self.net[0:2](x)
        f2 = self.net[2:5](f1)
        f3 = self.net[5:11](f2)

        def up(f: torch.Tensor, skip: torch.Tensor, conv: nn.Module) -> torch.Tensor:
            f = F.interpolate(f, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            return conv(torch.cat([f, skip], dim=1))

        return self.out(up(up(up(f3, f2, self.up3), f1, self.up2), x, self.up1))
