"""MIMIR pretraining: masked autoencoding of adversarial images with an HSIC penalty.

Each step (Xu et al. 2023, arXiv 2312.04960):

1. :func:`mimir_attack` makes ``x_adv``: L-inf PGD that *maximises* the model's masked
   reconstruction loss (uniform random start in the eps-ball, sign steps, projection, clamp to
   [0, 1]; model in eval mode, one mask for the whole attack, drawn independently of the
   training mask). By default (``attack_target="adversarial"``, the authors' code) the loss is
   the plain MAE forward on the perturbed image: the encoder sees ``x_adv`` and the target is
   ``x_adv`` itself, so every pixel gets a gradient (the masked ones through the target).
   ``attack_target="clean"`` scores the prediction against the clean image instead; the masked
   pixels (75%) then get no gradient and keep their random start. No gradient reaches the
   parameters.
2. The encoder sees ``x_adv`` with a second, independent mask; the decoder reconstructs the
   *clean* image (norm-pix loss on the masked patches).
3. ``loss = recon + hsic_weight * HSIC(x_adv, latent)``, ``latent`` the encoder output after
   its final norm (class + visible tokens). A non-finite HSIC counts as 0.

The step adds no host synchronisation of its own (with the model's per-forward input checks
off, as during training): step sizes live on the device and there is no data-dependent
Python branching.
"""

from __future__ import annotations

import torch

from .. import ops
from .._validate import check_int, check_number
from ..attacks.base import attack_mode, pgd_step, random_start
from ..hsic import hsic
from .base import Batch, Method, StepOutput, register_method

__all__ = [
    "ATTACK_TARGETS",
    "DEFAULT_STEP",
    "DEFAULT_STEPS",
    "MIMIRPretraining",
    "mimir_attack",
    "mimir_attack_loss",
]

DEFAULT_STEP = 10 / 255  # MIMIR's attack step size
DEFAULT_STEPS = 1  # and its number of steps
# what the attack's reconstruction loss scores the prediction against: the attacked image itself
# (the authors' code: the MAE called on x_adv) or the clean image
ATTACK_TARGETS = ("adversarial", "clean")


def mimir_attack_loss(
    model,
    x_in: torch.Tensor,
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    mask_ratio: float = 0.75,
    target: str = "adversarial",
) -> torch.Tensor:
    """The loss MIMIR's attack maximises at ``x_in``: the masked reconstruction loss (scalar).

    The encoder sees the visible patches (``ids_keep``) of ``x_in``; the decoder's prediction
    is scored over the masked patches against ``x_in`` itself (``target="adversarial"``: the
    gradient reaches every pixel, masked ones through the target) or against the clean ``x``
    (``target="clean"``: only the visible pixels get a gradient).
    """
    latent, mask, ids_restore = model.forward_encoder(x_in, mask_ratio, ids_keep)
    reference = x_in if target == "adversarial" else x
    return model.forward_loss(reference, model.forward_decoder(latent, ids_restore), mask)


def mimir_attack(
    model,
    x: torch.Tensor,
    eps: float = 8 / 255,
    step: float = DEFAULT_STEP,
    steps: int = DEFAULT_STEPS,
    ids_keep: torch.Tensor | None = None,
    mask_ratio: float = 0.75,
    kernels: str = "auto",
    return_loss: bool = False,
    target: str = "adversarial",
):
    """MIMIR's adversarial example: L-inf PGD on the masked reconstruction loss.

    The encoder sees the visible patches of the perturbed image; the loss scores the decoder's
    prediction over the masked patches against the perturbed image itself (``target=
    "adversarial"``, default: the authors' code calls the MAE on ``x_adv``, so every pixel is
    attacked) or against the clean ``x`` (``target="clean"``: the masked pixels get no
    gradient). The attack starts at a uniform random point of the eps-ball, takes ``steps``
    sign steps of size ``step``, projects onto the ball and clamps to [0, 1] after each. One
    mask serves every step (the authors' code draws a new one at each call of the MAE; for
    their single step that is the same). During the attack the model is in eval mode and its
    parameters are frozen (no ``.grad`` is written); both are restored after.

    Args:
        model: a :class:`~mimir_fast.MaskedViT`.
        x: (N, C, H, W) clean images in [0, 1] (not checked: that would cost a host sync).
        eps: L-inf radius, in [0, 1].
        step: step size, > 0.
        steps: number of gradient steps, >= 1.
        ids_keep: (N, len_keep) kept patch indices of the attack's mask; default: one random
            mask with ``mask_ratio``, drawn once and used for every step.
        mask_ratio: fraction of patches removed when ``ids_keep`` is not given.
        kernels: projected-step path: "auto" (fused Triton on CUDA), "torch" or "triton".
        return_loss: also return the (detached) mean reconstruction loss at the point where the
            last gradient was taken (for one step: the random start).
        target: "adversarial" or "clean" (see above).

    Returns:
        ``x_adv`` (detached, ``x``'s dtype), or ``(x_adv, loss)`` with ``return_loss``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError("x must be a floating-point (N, C, H, W) tensor of images in [0, 1]")
    eps = check_number(eps, "eps", 0.0, 1.0)
    step = check_number(step, "step", 0.0, 1.0, low_open=True)
    steps = check_int(steps, "steps", 1)
    if target not in ATTACK_TARGETS:
        raise ValueError(f"target must be one of {ATTACK_TARGETS}, got {target!r}")
    if not hasattr(model, "forward_encoder"):
        raise ValueError(
            "mimir_attack needs a MaskedViT (with forward_encoder/forward_decoder/forward_loss)"
        )
    x = x.detach()
    n = x.shape[0]
    if ids_keep is None:
        model._check_mask_ratio(mask_ratio)
        ids_keep, _, _ = ops.random_masking(n, model.num_patches, mask_ratio, x.device)
    # step sizes as device tensors: a Python number would be copied to the device at every step
    alpha_t = torch.full((), step, dtype=torch.float32, device=x.device)
    eps_t = torch.full((), eps, dtype=torch.float32, device=x.device)
    with attack_mode(model), torch.enable_grad():
        x_adv = random_start(x, eps, "linf", None)
        for _ in range(steps):
            x_in = x_adv.detach().requires_grad_(True)
            loss = mimir_attack_loss(model, x_in, x, ids_keep, mask_ratio, target)
            (grad,) = torch.autograd.grad(loss, x_in)
            x_adv = pgd_step(x_in.detach(), grad, x, alpha_t, eps_t, "linf", kernels)
    x_adv = x_adv.detach()
    return (x_adv, loss.detach().float()) if return_loss else x_adv


@register_method
class MIMIRPretraining(Method):
    """MIMIR: masked autoencoding of adversarial images with an HSIC(x_adv, latent) penalty.

    The attack uses ``config.attack_eps``, ``config.attack_step`` (default 10/255),
    ``config.attack_steps`` (default 1) and ``config.attack_target`` (default "adversarial":
    the attack reconstructs the attacked image itself, as the authors' code; "clean": against
    the clean image, which leaves the masked pixels at their random start). Its mask is
    ``batch.extras["ids_keep"]`` and the training mask ``batch.extras["ids_keep_1"]`` when the
    data loader supplies them, else independent random masks with ``config.mask_ratio``.
    ``config.hsic_weight`` (0 disables the term) and ``config.hsic_estimator`` set the penalty;
    with ``config.hsic_gather`` a distributed run computes HSIC over the batch gathered from
    every process (default: per process, as MIMIR).

    Metrics: ``loss``, ``recon`` (reconstruction of the clean image from ``x_adv``), ``hsic``
    (when its weight is > 0) and ``attack_recon``, the attack's own loss where it took its last
    gradient (for one step: at the random start near the clean image; with the default target
    it reconstructs that point itself, with "clean" the clean image).
    """

    name = "mimir"
    task = "pretrain"
    loader_masks = 2

    @property
    def attack_step(self) -> float:
        return DEFAULT_STEP if self.config.attack_step is None else self.config.attack_step

    @property
    def attack_steps(self) -> int:
        return DEFAULT_STEPS if self.config.attack_steps is None else self.config.attack_steps

    def attack(self, model, images: torch.Tensor, ids_keep: torch.Tensor | None = None):
        """``(x_adv, attack loss)`` for a batch, with the configured attack."""
        c = self.config
        return mimir_attack(
            model,
            images,
            c.attack_eps,
            self.attack_step,
            self.attack_steps,
            ids_keep,
            c.mask_ratio,
            kernels=c.kernels,
            return_loss=True,
            target=c.attack_target,
        )

    def training_step(self, model, batch: Batch) -> StepOutput:
        c = self.config
        clean = batch.images
        x_adv, attack_loss = self.attack(model, clean, batch.extras.get("ids_keep"))
        latent, mask, ids_restore = model.forward_encoder(
            x_adv, c.mask_ratio, batch.extras.get("ids_keep_1")
        )
        recon = model.forward_loss(clean, model.forward_decoder(latent, ids_restore), mask)
        metrics = {"recon": recon.detach(), "attack_recon": attack_loss}
        loss = recon
        if c.hsic_weight > 0:
            inputs, features = x_adv, latent
            if c.hsic_gather:  # the batch of every process (gradients flow back to this one's part)
                from ..distributed import current, gather_batch

                ctx = current()
                inputs, features = gather_batch(ctx, x_adv), gather_batch(ctx, latent)
            dependence = hsic(inputs, features, estimator=c.hsic_estimator, kernels=c.kernels)
            loss = recon + c.hsic_weight * dependence
            metrics["hsic"] = dependence.detach()
        metrics["loss"] = loss.detach()
        return StepOutput(loss, metrics)

    def evaluate(self, model, batches) -> dict[str, float]:
        """Held-out MAE loss on clean images (``loss``) and on the attack's images (``adv_loss``),
        both reconstructing the clean image with the same random mask per batch."""
        total, adv_total, count = torch.zeros(()), torch.zeros(()), 0
        for batch in batches:
            images = batch.images
            ids_keep, _, _ = ops.random_masking(
                images.shape[0], model.num_patches, self.config.mask_ratio, images.device
            )
            x_adv, _ = self.attack(model, images, ids_keep)
            with torch.no_grad():
                loss, _, _ = model.forward_mae(images, self.config.mask_ratio, ids_keep)
                adv_loss, _, _ = model.forward_mae(
                    x_adv, self.config.mask_ratio, ids_keep, target=images
                )
            n = images.shape[0]
            total += loss.float().cpu() * n
            adv_total += adv_loss.float().cpu() * n
            count += n
        return {"loss": float(total / max(count, 1)), "adv_loss": float(adv_total / max(count, 1))}
