"""The architecture of a :class:`~mimir_fast.models.MaskedViT`: one dataclass, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._validate import check_choice, check_int, check_positive, is_real

__all__ = ["GLOBAL_POOLS", "MaskedViTConfig", "check_fields"]

GLOBAL_POOLS = ("avg", "token")
_POSITIVE_INTS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "decoder_embed_dim",
    "decoder_num_heads",
)


@dataclass
class MaskedViTConfig:
    """Architecture of a :class:`MaskedViT`. Defaults: ViT-B/16 at 224 px with MIMIR's decoder."""

    img_size: int = 224  # square input side, pixels
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768  # encoder width
    depth: int = 12  # encoder blocks
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    decoder_embed_dim: int = 128  # MIMIR's small decoder; MAE's is 512 / 8 / 16
    decoder_depth: int = 2
    decoder_num_heads: int = 16
    num_classes: int = 1000  # 0: no classifier head (features only)
    global_pool: str = "avg"  # "avg" over patch tokens, or "token" (the class token)
    fc_norm: bool | None = None  # norm after pooling; None: True for "avg" pooling (as timm)
    drop_path_rate: float = 0.0  # stochastic depth of the encoder, linearly increasing
    norm_pix_loss: bool = True  # MAE loss on per-patch normalised targets
    learnable_pos_embed: bool = False  # fixed sin-cos by default; True for models from timm

    def __post_init__(self) -> None:
        try:
            self._check_types()
            self._check_shapes()
        except ValueError as e:
            raise ValueError(f"MaskedViTConfig: {e}") from None

    def _check_types(self) -> None:
        """Each field on its own: counts are integers, rates numbers, switches bools."""
        for name in _POSITIVE_INTS:
            setattr(self, name, check_int(getattr(self, name), name, low=1))
        for name in ("decoder_depth", "num_classes"):
            setattr(self, name, check_int(getattr(self, name), name, low=0))
        for name in ("mlp_ratio", "norm_eps"):
            check_positive(getattr(self, name), name)
        for name in ("qkv_bias", "norm_pix_loss", "learnable_pos_embed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
            raise ValueError(f"fc_norm must be None, True or False, got {self.fc_norm!r}")
        check_choice(self.global_pool, "global_pool", GLOBAL_POOLS)
        rate = self.drop_path_rate
        if not is_real(rate) or not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {rate!r}")

    def _check_shapes(self) -> None:
        """The fields together: patches tile the image, heads split the widths."""
        if round(self.embed_dim * self.mlp_ratio) < 1 or (
            round(self.decoder_embed_dim * self.mlp_ratio) < 1
        ):
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves an MLP without hidden units")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            raise ValueError(
                "embed_dim and decoder_embed_dim must be divisible by 4 (sin-cos position "
                "embedding)"
            )

    @property
    def use_fc_norm(self) -> bool:
        """Whether a norm follows the pooling: ``fc_norm``, or by default for "avg" pooling."""
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskedViTConfig:
        """The config from :meth:`to_dict`'s output; unknown fields raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(
                f"a MaskedViTConfig is built from a dict of its fields, got {type(d).__name__}"
            )
        check_fields(d)
        return cls(**d)


def check_fields(fields: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the keys of ``fields`` that are not MaskedViTConfig fields."""
    known = {f.name for f in dataclasses.fields(MaskedViTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown MaskedViTConfig fields: {unknown}")
