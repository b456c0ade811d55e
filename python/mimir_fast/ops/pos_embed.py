"""Fixed 2D sine-cosine position embeddings."""

import torch

__all__ = ["sincos_pos_embed_2d"]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) = [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-k / (dim/2))."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(
    dim: int, grid_size: tuple[int, int], cls_token: bool = True
) -> torch.Tensor:
    """MAE's fixed 2D sin-cos embedding for a row-major patch grid.

    The first half of the channels encodes the patch's *column* and the second half its *row*.
    MAE's reference code names these halves the other way round (its meshgrid swaps them); the
    layout is kept so that released MAE/MIMIR weights load unchanged.

    Args:
        dim: embedding width, divisible by 4.
        grid_size: (rows, cols) of the patch grid.
        cls_token: prepend an all-zero row for the class token.

    Returns:
        (1 + rows*cols, dim) if ``cls_token`` else (rows*cols, dim), float32.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    rows, cols = grid_size
    row = torch.arange(rows).repeat_interleave(cols)  # (L,) row index of each patch
    col = torch.arange(cols).repeat(rows)  # (L,) column index of each patch
    emb = torch.cat([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
