"""MaskedViT: one Vision Transformer that is an MAE, a denoising autoencoder and a classifier.

- Masked autoencoder, with MAE's method names: ``random_masking``, ``forward_encoder``,
  ``forward_decoder``, ``forward_loss``; ``model(x, mask_ratio=0.75)`` returns
  ``(loss, pred, mask)``.
- Denoising autoencoder over all tokens (NIM): ``forward_denoise(x_noisy, x_clean)``.
- Classifier, a drop-in for timm's ``VisionTransformer``: ``model(x)`` returns logits;
  ``forward_features`` / ``forward_head`` follow timm; :meth:`MaskedViT.from_timm` carries a
  timm ViT's weights over.

The config lives in :mod:`.config`, files in :mod:`._io`, the timm conversion in :mod:`._timm`,
the named presets in :mod:`.presets`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from .. import ops
from .._validate import check_choice, check_number
from ..kernels.dispatch import resolve_kernels, use_triton
from ..ops.decoder_scatter import decoder_scatter
from ..ops.masked_patch_embed import masked_patch_embed
from ..ops.norm_pix_loss import norm_pix_loss
from . import _io, _timm
from ._checks import check_ids_keep, check_images
from .config import GLOBAL_POOLS, MaskedViTConfig, check_fields
from .layers import Block, PatchEmbed

__all__ = ["MASKED_VIT_TRITON_OPS", "MaskedViT"]

# MaskedViT's ops that have a Triton kernel (kernels/<op>.py).
MASKED_VIT_TRITON_OPS: tuple[str, ...] = (
    "masked_patch_embed",
    "decoder_scatter",
    "attention",
    "norm_pix_loss",
)


class MaskedViT(nn.Module):
    """An MAE-style Vision Transformer with a classifier head.

    Args:
        config: the architecture; keyword ``overrides`` replace its fields.
        kernels: "auto" (a Triton kernel where ``kernels/verified.json`` says it was verified
            faster on this GPU and dtype, else PyTorch), "torch" or "triton". The
            ``MIMIR_FAST_KERNELS`` environment variable, when set, replaces the default "auto";
            an explicit "torch" or "triton" wins over it. The Triton path fuses the masked
            patch embedding, the decoder's unshuffle + mask token + position add, the
            attention of every block (except at shapes listed in
            ``kernels.dispatch.SDPA_PREFERRED``) and the norm-pix loss; each kernel is a
            ``torch.library`` custom op, so the model also runs under ``torch.compile``. It runs
            on CUDA tensors (or on the CPU under ``TRITON_INTERPRET=1``); other tensors take
            the PyTorch path. ``backend`` says whether any kernel may run; "auto" is decided
            on each call, per op and dtype.
    """

    def __init__(
        self, config: MaskedViTConfig | None = None, *, kernels: str = "auto", **overrides: Any
    ):
        super().__init__()
        check_fields(overrides)
        config = dataclasses.replace(config or MaskedViTConfig(), **overrides)
        self.config = c = config
        self.kernels = kernels
        self.backend = resolve_kernels(kernels, MASKED_VIT_TRITON_OPS)  # "torch" or "triton"
        # what each op call is given: there "auto" is decided per op, device and dtype
        self.op_kernels = kernels if self.backend == "triton" else "torch"
        self.check_inputs = True  # validate shapes/dtypes/finiteness of public inputs
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_prefix_tokens = 1
        self.embed_dim = self.num_features = c.embed_dim
        self._build_encoder(c)
        self._build_decoder(c)
        for block in (*self.blocks, *self.decoder_blocks):
            block.attn.backend = self.op_kernels
        self._init_weights()

    # ------------------------------------------------------------------ setup
    def _build_encoder(self, c: MaskedViTConfig) -> None:
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        pos = ops.sincos_pos_embed_2d(c.embed_dim, self.grid_size).unsqueeze(0)  # (1, 1+L, D)
        if c.learnable_pos_embed:
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos)
        dpr = torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, dpr[i], c.norm_eps)
            for i in range(c.depth)
        )
        # `norm` ends the encoder (MAE latent, token pooling); `fc_norm` follows average pooling.
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.use_fc_norm else nn.Identity()
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()

    def _build_decoder(self, c: MaskedViTConfig) -> None:
        patch_dim = c.patch_size**2 * c.in_chans
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed",
            ops.sincos_pos_embed_2d(c.decoder_embed_dim, self.grid_size).unsqueeze(0),
        )  # (1, 1 + L, Dd)
        self.decoder_blocks = nn.ModuleList(
            Block(
                c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.qkv_bias, 0.0, c.norm_eps
            )
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.norm_eps)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, patch_dim)

    def _init_weights(self) -> None:
        """MAE's initialisation: xavier-uniform linears (and the patch projection), N(0, 0.02)
        tokens."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_head()

    def _init_head(self) -> None:
        """A near-zero head (as in MAE's finetuning): training starts from uniform predictions."""
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (timm's hook)."""
        return {"cls_token", "mask_token", "pos_embed"}

    def param_groups(
        self, weight_decay: float = 0.05, layer_decay: float = 1.0
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups: no decay on norms, biases and tokens; layer-wise lr decay.

        The patch embedding, tokens and position embedding are layer 0, block ``i`` is layer
        ``i + 1``, everything after the blocks (norms, head, decoder) is layer ``depth + 1``.
        Each group carries ``lr_scale = layer_decay ** (depth + 1 - layer)``.
        """
        num_layers = self.config.depth + 1
        skip = self.no_weight_decay()
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim == 1 or name in skip
            if name.startswith(("cls_token", "pos_embed", "patch_embed")):
                layer = 0
            elif name.startswith("blocks."):
                layer = int(name.split(".")[1]) + 1
            else:
                layer = num_layers
            key = (layer, no_decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "param_names": [],
                    "layer": layer,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr_scale": layer_decay ** (num_layers - layer),
                }
            groups[key]["params"].append(p)
            groups[key]["param_names"].append(name)
        return [groups[k] for k in sorted(groups)]

    # ------------------------------------------------------------------ validation
    def _check_images(self, x: torch.Tensor, name: str = "x") -> None:
        if self.check_inputs:
            check_images(x, self.config, name)

    @staticmethod
    def _check_mask_ratio(mask_ratio: float) -> None:
        check_number(mask_ratio, "mask_ratio", 0, 1, high_open=True)

    def _check_ids_keep(self, ids_keep: torch.Tensor, batch: int) -> None:
        if self.check_inputs:
            check_ids_keep(ids_keep, batch, self.num_patches)

    # ------------------------------------------------------------------ helpers
    def _fast(self, t: torch.Tensor) -> bool:
        """Whether the fused Triton kernels run for a tensor on ``t``'s device: backend "triton" and
        a CUDA tensor (or the CPU interpreter, TRITON_INTERPRET=1)."""
        return use_triton(self.op_kernels, "masked_patch_embed", t)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C)."""
        return ops.patchify(images, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        return ops.unpatchify(patches, self.config.patch_size, self.config.in_chans, self.grid_size)

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE's per-sample random masking of a token sequence.

        Args:
            x: (N, L, D) tokens. mask_ratio: fraction removed. noise: optional (N, L) scores.

        Returns:
            (x_masked (N, len_keep, D), mask (N, L) with 1 = removed, ids_restore (N, L)).
        """
        n, length, d = x.shape
        ids_keep, mask, ids_restore = ops.random_masking(n, length, mask_ratio, x.device, noise)
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        return x_masked, mask, ids_restore

    # ------------------------------------------------------------------ autoencoder
    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float = 0.75, ids_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches.

        Args:
            x: (N, C, H, W) images.
            mask_ratio: fraction of patches removed at random (ignored when ``ids_keep`` is given);
                0 keeps every patch in order.
            ids_keep: (N, len_keep) int64 kept patch indices (e.g. from the data loader).

        Returns:
            latent (N, 1 + len_keep, D) after the final norm, mask (N, L) with 1 = removed,
            ids_restore (N, L).
        """
        self._check_images(x)
        n = x.shape[0]
        tokens, mask, ids_restore = self._embed_kept(x, mask_ratio, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)  # (N, 1 + len_keep, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens), mask, ids_restore

    def _embed_kept(
        self, x: torch.Tensor, mask_ratio: float, ids_keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens of the kept patches, position added: ``ids_keep``, or a random mask.

        The mask is drawn before the embedding, so every path makes the same generator calls.
        """
        n, length = x.shape[0], self.num_patches
        if ids_keep is not None:
            self._check_ids_keep(ids_keep, n)
            mask, ids_restore = ops.ids_from_keep(ids_keep, length)
        elif mask_ratio == 0:
            self._check_mask_ratio(mask_ratio)
            mask = x.new_zeros(n, length, dtype=torch.float32)
            ids_restore = torch.arange(length, device=x.device).expand(n, -1)
            ids_keep = ids_restore
        else:
            self._check_mask_ratio(mask_ratio)
            ids_keep, mask, ids_restore = ops.random_masking(n, length, mask_ratio, x.device)
        proj = self.patch_embed.proj
        tokens = masked_patch_embed(
            x, ids_keep, proj.weight, proj.bias, self.pos_embed[0, 1:, :], kernels=self.op_kernels
        )
        return tokens, mask, ids_restore  # (N, len_keep, D)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the visible tokens' latents.

        Args:
            latent: (N, 1 + len_keep, D) from :meth:`forward_encoder`. ids_restore: (N, L).

        Returns:
            (N, L, p*p*C) predicted patches (normalised patches when ``norm_pix_loss``).
        """
        x = self.decoder_embed(latent)  # (N, 1 + len_keep, Dd)
        x = decoder_scatter(
            x, ids_restore, self.mask_token, self.decoder_pos_embed, kernels=self.op_kernels
        )  # (N, 1 + L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(
        self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """MSE between ``pred`` and the patches of ``x`` over the removed patches (all if ``mask``
        is None), on per-patch normalised targets when ``norm_pix_loss``."""
        c = self.config
        return norm_pix_loss(x, pred, mask, c.patch_size, c.norm_pix_loss, kernels=self.op_kernels)

    def forward_mae(
        self,
        x: torch.Tensor,
        mask_ratio: float = 0.75,
        ids_keep: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked autoencoding: returns ``(loss, pred, mask)``.

        ``target`` (default ``x``) is the image to reconstruct; MIMIR encodes an adversarial
        image and reconstructs the clean one.
        """
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        if target is not None:
            self._check_images(target, "target")
        return self.forward_loss(x if target is None else target, pred, mask), pred, mask

    def forward_denoise(
        self, x_noisy: torch.Tensor, x_clean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising autoencoding over all tokens (NIM): returns ``(loss, pred)``.

        The encoder sees every patch of ``x_noisy``; the loss covers every patch of ``x_clean``
        (default: ``x_noisy`` itself).
        """
        latent, _, ids_restore = self.forward_encoder(x_noisy, 0.0)
        pred = self.forward_decoder(latent, ids_restore)
        if x_clean is not None:
            self._check_images(x_clean, "x_clean")
        return self.forward_loss(x_noisy if x_clean is None else x_clean, pred, None), pred

    def pred_to_image(
        self, pred: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Turn predicted patches into an image.

        With ``norm_pix_loss`` the prediction is per-patch normalised; ``reference`` supplies
        the per-patch mean and std to undo it (for pictures of reconstructions; never feed an
        attacker-controlled reference into a defense).
        """
        if self.config.norm_pix_loss:
            if reference is None:
                raise ValueError(
                    "this model predicts normalised patches; pass reference= images to "
                    "restore their per-patch mean and std"
                )
            target = self.patchify(reference)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        return self.unpatchify(pred)

    # ------------------------------------------------------------------ classifier (timm API)
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens through the encoder: (N, 1 + L, D). As in timm, the final ``norm`` is applied
        here only when no ``fc_norm`` follows the pooling."""
        self._check_images(x)
        n = x.shape[0]
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens if self.config.use_fc_norm else self.norm(tokens)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (average of patch tokens, or the class token), norm, then the linear head."""
        if self.global_pool == "avg":
            pooled = features[:, self.num_prefix_tokens :].mean(dim=1)
        else:
            pooled = features[:, 0]
        pooled = self.fc_norm(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(
        self, x: torch.Tensor, mask_ratio: float | None = None, ids_keep: torch.Tensor | None = None
    ):
        """``model(x)`` -> logits (N, num_classes), like timm.

        ``model(x, mask_ratio)`` or ``model(x, ids_keep=...)`` -> ``(loss, pred, mask)``, like MAE.
        """
        if mask_ratio is None and ids_keep is None:
            return self.forward_head(self.forward_features(x))
        return self.forward_mae(x, 0.75 if mask_ratio is None else mask_ratio, ids_keep)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (timm's API), e.g. after pretraining. The norm layout stays as built."""
        self.config.fc_norm = isinstance(self.fc_norm, nn.LayerNorm)
        self.num_classes = self.config.num_classes = num_classes
        if global_pool is not None:
            check_choice(global_pool, "global_pool", GLOBAL_POOLS)
            self.global_pool = self.config.global_pool = global_pool
        device = self.cls_token.device
        self.head = (
            nn.Linear(self.embed_dim, num_classes).to(device) if num_classes > 0 else nn.Identity()
        )
        self._init_head()

    def set_drop_path(self, rate: float) -> None:
        """Set the encoder's stochastic depth (linearly increasing over blocks up to ``rate``)."""
        check_number(rate, "drop path rate", 0.0, 1.0, high_open=True)
        self.config.drop_path_rate = rate
        for block, p in zip(self.blocks, torch.linspace(0, rate, len(self.blocks)).tolist()):
            block.drop_path.drop_prob = p

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write weights and config to one safetensors file (atomically; no pickle)."""
        _io.save_model(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        kernels: str = "auto",
    ) -> MaskedViT:
        """Build a model from a file written by :meth:`save` (or a training checkpoint)."""
        return _io.load_model(cls, path, map_location, kernels)

    def load_weights(
        self, state: dict[str, torch.Tensor], source: str = "state dict", strict: bool = True
    ) -> None:
        """``load_state_dict`` with errors that say which tensors are missing or mis-shaped."""
        _io.load_weights(self, state, source, strict)

    @classmethod
    def from_timm(cls, vit: nn.Module, kernels: str = "auto", **overrides: Any) -> MaskedViT:
        """A MaskedViT carrying the weights of a timm ``VisionTransformer``.

        The position embedding becomes learnable (timm's is learned); the decoder is freshly
        initialised. Supported: class token, no register tokens, plain pre-norm blocks (no
        layer scale, no q/k norm), GELU MLPs, ``global_pool`` "avg" or "token".
        """
        return _timm.from_timm(cls, vit, kernels, **overrides)
