"""ImageNet-style image folders ``root/<class_name>/<image>``, decoded with PIL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mimir_fast._validate import check_int
from mimir_fast.data.arrays import PathLike, Transform

__all__ = ["ImageFolder"]


class ImageFolder(Dataset):
    """ImageNet-style tree ``root/<class_name>/<image>`` decoded with PIL as RGB.

    Classes are the sorted subfolder names; images are found recursively inside
    each class folder. Without a transform each image is resized (bilinear) so its
    short side is ``image_size`` and center-cropped to ``image_size``; with one,
    the transform receives the full-resolution (3, H, W) image and must produce
    ``image_size`` x ``image_size`` output itself.

    Args:
        root: Folder holding one subfolder per class.
        image_size: Output height and width.
        transform: Optional callable replacing the resize + center crop.
        extensions: Accepted file suffixes (case-insensitive).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No class folders or no images; ``__getitem__`` raises it for an
            undecodable image, naming the file.
    """

    def __init__(
        self,
        root: PathLike,
        image_size: int = 224,
        transform: Transform | None = None,
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp", ".webp"),
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        image_size = check_int(image_size, "image_size", 1)
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise ValueError(f"no class subfolders in {root}; expected root/<class_name>/<image>")
        samples = []
        for label, name in enumerate(classes):
            files = sorted(
                p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in exts
            )
            samples.extend((str(p), label) for p in files)
        if not samples:
            raise ValueError(f"no images with extensions {exts} found under {root}/<class_name>/")

        self.root = root
        self.classes = classes
        self.samples = samples
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.num_classes = len(classes)
        self.in_chans = 3
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, path: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (
            OSError,
            UnidentifiedImageError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
        ) as e:
            raise ValueError(f"cannot decode image {path}: {e}") from e
        except Exception as e:  # PIL's plugins raise many other types for corrupt data
            raise ValueError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e

    def _resize_center_crop(self, im):
        from PIL import Image

        s = self.image_size
        w, h = im.size
        if w <= h:
            nw, nh = s, max(s, round(h * s / w))
        else:
            nw, nh = max(s, round(w * s / h)), s
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - s) // 2, (nh - s) // 2
        return im.crop((left, top, left + s, top + s))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        im = self._decode(path)
        if self.transform is None:
            im = self._resize_center_crop(im)
        img = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, label
