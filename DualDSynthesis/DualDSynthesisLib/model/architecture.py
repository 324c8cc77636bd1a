"""The networks' hyper-parameters and topology facts, without torch.

:class:`ArchitectureConfig` is what a model bundle records about its three networks; it is plain data,
so a bundle's details (``bundle.read_metadata``) and the engine's crop margins are known before PyTorch
is imported. The network classes themselves live in ``networks.py`` (torch); the factory methods here
import it only when a network is really built. The receptive-field and down-sampling facts sit next to
the configuration because both the networks (``networks.py``) and the crop arithmetic (``engine.py``)
read them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the classes only; networks.py imports torch
    from .networks import GlobalCritic, LocalDiscriminator, UNetGenerator

Norm = Literal["batch", "instance", "layer", "none"]
NORMS: tuple[str, ...] = ("batch", "instance", "layer", "none")
D2Head = Literal["patch", "pixel"]
D2_HEADS: tuple[str, ...] = ("patch", "pixel")
MAX_DEPTH = 7  # a 2^8 down-sampling is larger than any slice
_ARCH_LIMITS = {"in_channels": 64, "g_base_width": 1024, "g_depth": MAX_DEPTH, "d2_base_width": 1024}


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def generator_receptive_field(depth: int) -> int:
    """Receptive-field width of the UNet's deepest path (two 3×3 convs per level, 2×2 pools,
    bilinear ×2 up-sampling, a 3×3 conv after each up-sampling, two 3×3 convs per decoder)."""
    rf, jump = 1, 1
    for _ in range(depth):
        rf += 4 * jump + jump  # two 3×3 convs, then a 2×2 max-pool
        jump *= 2
    rf += 4 * jump  # bottom double conv
    for _ in range(depth):
        rf += jump  # bilinear up-sampling reads two neighbours of the coarse grid
        jump //= 2
        rf += 2 * jump + 4 * jump  # up-conv, then the decoder's double conv
    return rf


def local_receptive_field(head: str) -> int:
    """D2's receptive field: three 4×4/2 convs and two 3×3 convs at stride 8 (~54 px); the pixel head's
    decoder adds a bilinear read and a 3×3 conv at strides 8, 4, 2 and the output conv at stride 1."""
    rf = 1 + 3 * 1 + 3 * 2 + 3 * 4 + 2 * 8 + 2 * 8
    if head == "pixel":
        rf += (8 + 2 * 4) + (4 + 2 * 2) + (2 + 2 * 1) + 2
    return rf


def local_downsampling(head: str) -> int:
    """Input pixels per D2 output element along each axis (8 for the paper's patch D2, 1 per pixel)."""
    return 8 if head == "patch" else 1


@dataclass(frozen=True)
class ArchitectureConfig:
    """Hyper-parameters of the three networks; stored verbatim in a model bundle."""

    in_channels: int = 1
    g_base_width: int = 64
    g_depth: int = 4
    g_norm: Norm = "batch"
    d1_norm: Norm = "layer"
    d2_base_width: int = 64
    d2_norm: Norm = "batch"
    g_error_head: bool = False  # G's second output: expected |error| (Laplace scale), the trust map
    d2_head: D2Head = "patch"  # "patch": the paper's 1/8-grid D2; "pixel": a U-Net D2 with one logit per pixel

    def __post_init__(self) -> None:
        if not isinstance(self.g_error_head, bool):
            raise ValueError(f"g_error_head must be true or false, got {self.g_error_head!r}")
        if self.d2_head not in D2_HEADS:
            raise ValueError(f"d2_head must be one of {', '.join(D2_HEADS)}, got {self.d2_head!r}")
        for name in ("in_channels", "g_base_width", "g_depth", "d2_base_width"):
            check_positive(name, getattr(self, name))
            # Upper bounds, so edited metadata (g_depth 40) gets a sentence instead of a huge allocation.
            if getattr(self, name) > _ARCH_LIMITS[name]:
                raise ValueError(f"{name} must be at most {_ARCH_LIMITS[name]}, got {getattr(self, name)}")
        for name in ("g_norm", "d1_norm", "d2_norm"):
            if getattr(self, name) not in NORMS:
                raise ValueError(f"{name} must be one of {', '.join(NORMS)}, got {getattr(self, name)!r}")

    @property
    def size_multiple(self) -> int:
        return 2**self.g_depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchitectureConfig:
        if not isinstance(data, dict):
            raise ValueError(f"an architecture must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture setting(s): {', '.join(unknown)}")
        return cls(**data)

    @property
    def d2_downsampling(self) -> int:
        """Input pixels per D2 output element along each axis (8 for the paper's patch D2, 1 per pixel)."""
        return local_downsampling(self.d2_head)

    @property
    def generator_outputs(self) -> int:
        return 2 if self.g_error_head else 1

    def receptive_margin(self, with_d2: bool = True) -> int:
        """Pixels around a point that can influence G's output there (and D2's map, with ``with_d2``)."""
        margin = (generator_receptive_field(self.g_depth) + 1) // 2
        if with_d2:
            margin += (local_receptive_field(self.d2_head) + 1) // 2 + self.d2_downsampling  # + bilinear up-sampling
        return margin

    # ---- the networks (torch, imported only here) ----

    def generator(self) -> UNetGenerator:
        from .networks import UNetGenerator

        return UNetGenerator(self.in_channels, self.g_base_width, self.g_depth, self.g_norm, self.generator_outputs)

    def global_critic(self) -> GlobalCritic:
        from .networks import GlobalCritic

        return GlobalCritic(1, self.d1_norm)

    def local_discriminator(self) -> LocalDiscriminator:
        from .networks import LocalDiscriminator

        return LocalDiscriminator(1, self.d2_base_width, self.d2_norm, self.d2_head)
