"""Near-duplicate images found on decoded pixels, not bytes: a copy re-saved with other settings, re-encoded, or
with a few pixels edited is still the same picture and must not sit in another split than its original.

Each image becomes a 32×32 grey thumbnail (area average). Two images are near-duplicates when their thumbnails
differ by at most MAX_MEAN_DIFFERENCE on average (0.008 of the grey range, about 2 of 255 levels). Measured in
benchmarks/traps.md: a lossless re-save differs by 0, one changed pixel of a 128×128 image by 0.00006, a JPEG
re-encode at quality 75 by ≤ 0.0024; the closest two different slices of the cardiac demo differ by 0.068 and of
the X-ray demo by 0.035. A 64-bit hash with a bit-count threshold was not used: it cannot be tuned so finely and
still needs a pixel check to tell a re-encode from a neighbouring slice.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

THUMB = 32
MAX_MEAN_DIFFERENCE = 0.008
_COARSE = 4             # 4×4 block means: a cheap first filter that can never drop a true pair (see below)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) float image in [0, 1] → uint8 (THUMB, THUMB) grey thumbnail (1 KB: 200,000 files fit in memory;
    rounding moves a mean difference by at most 0.002, well inside the limit)."""
    grey = frame[0] if frame.shape[0] == 1 else frame.mean(axis=0)
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))
    small = np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)
    return np.round(np.clip(small, 0.0, 1.0) * 255).astype(np.uint8)


def near_duplicate_sets(thumbs: np.ndarray, limit: float = MAX_MEAN_DIFFERENCE) -> list[list[int]]:
    """Indices of images whose thumbnails (uint8, or float in [0, 1]) are near-duplicates of each other, as sets
    of 2 or more in index order."""
    n = len(thumbs)
    if n < 2:
        return []
    flat = np.ascontiguousarray(thumbs).reshape(n, -1)
    # Identical thumbnails (blank images, lossless copies) first, so a flood of them costs one comparison
    seen: dict[bytes, int] = {}
    same = np.array([seen.setdefault(row.tobytes(), i) for i, row in enumerate(flat)], dtype=np.int64)
    first = np.array(sorted(seen.values()), dtype=np.int64)
    scale = 255.0 if flat.dtype == np.uint8 else 1.0
    close = first[_close_pairs(flat[first].astype(np.float32) / scale, limit)]
    links = np.concatenate([np.stack([np.arange(n), same], axis=1), close.reshape(-1, 2)])
    return linked_sets(n, links)


def linked_sets(n: int, links: np.ndarray) -> list[list[int]]:
    """Sets of 2 or more indices joined (directly or through others) by the (i, j) rows of `links`."""
    links = np.asarray(links, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(links), dtype=np.int8), (links[:, 0], links[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sets: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        sets.setdefault(c, []).append(i)
    return sorted((members for members in sets.values() if len(members) > 1), key=lambda m: m[0])


def _close_pairs(flat: np.ndarray, limit: float) -> np.ndarray:
    """Pairs whose mean absolute difference is ≤ limit. The mean difference of two images bounds that of their
    block means, so the tree search on block means (L1 radius blocks × limit) finds every such pair."""
    n = len(flat)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    step = THUMB // _COARSE
    coarse = flat.reshape(n, _COARSE, step, _COARSE, step).mean(axis=(2, 4)).reshape(n, -1)
    pairs = cKDTree(coarse).query_pairs(r=coarse.shape[1] * limit + 1e-6, p=1, output_type="ndarray")
    if not len(pairs):
        return pairs
    close = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 4096):            # bounded memory however many candidates
        chunk = pairs[start:start + 4096]
        close[start:start + 4096] = np.abs(flat[chunk[:, 0]] - flat[chunk[:, 1]]).mean(axis=1) <= limit
    return pairs[close]
