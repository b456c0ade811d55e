"""MAE's per-sample random patch masking, and the same bookkeeping from given kept indices."""

import torch

__all__ = ["ids_from_keep", "random_masking"]


def random_masking(
    num_samples: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one random mask per sample, exactly as MAE defines it.

    Each sample keeps ``len_keep = int(L * (1 - mask_ratio))`` patches: the ones with the
    smallest noise values.

    Returns:
        ids_keep: (N, len_keep) int64, indices of kept patches in shuffled order.
        mask: (N, L) float, 1 for removed patches and 0 for kept ones, in original order.
        ids_restore: (N, L) int64, the permutation that unshuffles ``[kept, removed]``.
    """
    len_keep = int(num_patches * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(num_samples, num_patches, device=device)  # (N, L)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = (ids_restore >= len_keep).to(torch.float32)  # removed patches sit after len_keep
    return ids_keep, mask, ids_restore


def ids_from_keep(ids_keep: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask and ``ids_restore`` that belong to given kept indices.

    The removed patches are appended after the kept ones in ascending order; their order does
    not matter to the model (every removed patch becomes the same mask token).

    Args:
        ids_keep: (N, len_keep) int64, distinct patch indices per row.
        num_patches: L.

    Returns:
        mask: (N, L) float, 1 = removed. ids_restore: (N, L) int64.
    """
    n, len_keep = ids_keep.shape
    kept = torch.zeros(n, num_patches, dtype=torch.bool, device=ids_keep.device)
    kept.scatter_(1, ids_keep, True)
    mask = (~kept).to(torch.float32)
    # Stable sort on the mask puts the removed patches last, in ascending order.
    removed = torch.argsort(mask, dim=1, stable=True)[:, len_keep:]
    ids_shuffle = torch.cat([ids_keep, removed], dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return mask, ids_restore
