"""95 % intervals for scores measured on a finite set of images: Wilson for proportions, bootstrap for means.

A validation score from 12 images is not a property of the model but one draw: the interval says how far
another 12 images could move it. Plain numpy and the standard library; imports nothing of Lightbox.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0          # fixed, so the same per-image scores always give the same interval
_CHUNK_VALUES = 4_000_000   # resampled values held in memory at once (a few tens of MB)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = CONFIDENCE) -> list[float]:
    """Wilson score interval [low, high] of a proportion successes/n; [nan, nan] when n is 0.

    Unlike p ± z·sqrt(p(1-p)/n) it never collapses to zero width at 0 % or 100 % (12 of 12 → about [0.76, 1])."""
    if n <= 0:
        return [math.nan, math.nan]
    p, z2 = successes / n, _z(confidence) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def balanced_accuracy_interval(confusion: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """Wilson interval of balanced accuracy (mean recall over classes present), on an effective n.

    The mean of K class recalls with n_k cases each has variance ≈ p(1-p)/K² · Σ 1/n_k, which is that of one
    proportion over n_eff = K² / Σ 1/n_k cases: n itself for balanced classes, near K × the smallest class when
    one class is rare — the rare class is what limits how sure we can be."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return [math.nan, math.nan]
    recall = np.diag(confusion)[present] / support[present]
    k = int(present.sum())
    n_eff = k * k / float(np.sum(1.0 / support[present]))
    return wilson_interval(float(recall.mean()) * n_eff, n_eff, confidence)


def bootstrap_interval(values: np.ndarray, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Percentile bootstrap over images of the mean of per-image scores; [nan, nan] with fewer than 2 images.

    `values` is (N,) or (N, C) for C classes; nan marks "not scored on this image" (e.g. the class is absent).
    The statistic is the per-class mean over scored images, then the mean over classes — what the meter
    reports — so an image is resampled with all its classes. Images scored for no class are left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    v = v[np.isfinite(v).any(axis=1)]
    n = len(v)
    if n < 2:
        return [math.nan, math.nan]
    scored = np.isfinite(v)
    filled = np.where(scored, v, 0.0)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_VALUES // (n * v.shape[1]))
    stats = []
    for start in range(0, resamples, per_chunk):
        index = rng.integers(0, n, size=(min(per_chunk, resamples - start), n))
        stats.append(_mean_of_class_means(filled[index], scored[index]))
    alpha = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(stats), [alpha, 100 - alpha])
    return [float(low), float(high)]


def _mean_of_class_means(filled: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """(R, N, C) resamples → (R,) means over classes of per-class means over scored images, without nan warnings."""
    counts = scored.sum(axis=1)
    class_means = filled.sum(axis=1) / np.maximum(counts, 1)
    has = counts > 0
    return (class_means * has).sum(axis=1) / np.maximum(has.sum(axis=1), 1)
