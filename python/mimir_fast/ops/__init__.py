"""Every op of the package: its plain-PyTorch reference, and the choice of path.

``ops/<op>.py`` shares its name with ``kernels/<op>.py`` (:mod:`mimir_fast.kernels`): it holds the
readable reference, ``<op>_reference`` (computed in fp32; the tests compare every kernel against
it), and ``<op>(..., kernels=...)``, which runs the Triton kernel where
:mod:`mimir_fast.kernels.dispatch` picks it and the reference elsewhere. Ops: attention,
masked_patch_embed, decoder_scatter, norm_pix_loss, gaussian_gram, pgd_step. The helpers without
a kernel (patches, masking, position embeddings) live here too.
"""

from .masking import ids_from_keep, random_masking
from .norm_pix_loss import masked_mse_loss, normalize_patches
from .patch import patchify, unpatchify
from .pgd_step import pgd_step, project
from .pos_embed import sincos_pos_embed_2d

__all__ = [
    "ids_from_keep",
    "masked_mse_loss",
    "normalize_patches",
    "patchify",
    "pgd_step",
    "project",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]
