"""SpRAy (Lapuschkin et al. 2019): spectral clustering of one class's attribution maps.

Each map is made non-negative (``|a|``), average-pooled, and scaled to unit sum, so that maps compare by
*where* the evidence lies rather than by how much there is. A symmetric k-nearest-neighbour graph
links similar maps; the eigenvalues of its normalised Laplacian count the well-separated groups (the
eigengap: ``k`` near-zero eigenvalues followed by a jump mean ``k`` clusters), and k-means on the
leading eigenvectors (Ng, Jordan & Weiss 2001) assigns them. A class answered by two strategies, one
looking at the object and one at a marker, shows up as two clusters.

Implemented on scipy rather than scikit-learn because the analysis needs the eigenvalue spectrum itself
(to show the eigengap), which scikit-learn's ``SpectralClustering`` does not expose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import XaiError


@dataclass
class SprayResult:
    labels: np.ndarray  # [N] cluster per map
    eigenvalues: np.ndarray  # the smallest eigenvalues of the normalised Laplacian, ascending
    embedding: np.ndarray  # [N, 2] the 2nd and 3rd eigenvector coordinates, for a scatter plot
    n_clusters: int
    eigengap: float  # eigenvalue[n_clusters] - eigenvalue[n_clusters - 1]
    features: np.ndarray  # [N, h * w] the pooled, unit-sum maps that were clustered

    def cluster_means(self, maps: torch.Tensor) -> torch.Tensor:
        """The mean ``|map|`` of each cluster, ``[n_clusters, H, W]``."""
        a = maps.abs().sum(1) if maps.dim() == 4 else maps.abs()
        return torch.stack([a[torch.as_tensor(self.labels == c)].mean(0) for c in range(self.n_clusters)])


def prepare_maps(maps: torch.Tensor, pool: int = 2) -> np.ndarray:
    """``[N, C, H, W]`` attributions or ``[N, H, W]`` maps -> ``[N, features]`` unit-sum rows."""
    if maps.dim() == 4:
        a = maps.abs().sum(1)
    elif maps.dim() == 3:
        a = maps.abs()
    else:
        raise XaiError(f"expected attributions [N, C, H, W] or maps [N, H, W], got {tuple(maps.shape)}")
    a = a.detach().double().cpu()
    if pool > 1:
        a = F.avg_pool2d(a[:, None], pool, ceil_mode=True)[:, 0]
    a = a.flatten(1)
    total = a.sum(1, keepdim=True)
    a = torch.where(total > 0, a / total.clamp_min(1e-300), torch.full_like(a, 1.0 / a.shape[1]))
    return a.numpy()


def spray(maps: torch.Tensor, *, n_clusters: int | None = None, neighbours: int = 10, max_clusters: int = 6,
          pool: int = 2, seed: int = 0, restarts: int = 10) -> SprayResult:
    """Cluster attribution maps; ``n_clusters=None`` picks the count by the largest eigengap (2..max)."""
    from scipy.cluster.vq import kmeans2
    from scipy.linalg import eigh
    from scipy.spatial.distance import cdist

    x = prepare_maps(maps, pool)
    n = x.shape[0]
    if n < 4:
        raise XaiError(f"SpRAy needs at least 4 maps, got {n}")
    k = min(neighbours, n - 1)
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    conn = np.zeros((n, n))
    conn[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    affinity = 0.5 * (conn + conn.T)
    deg = affinity.sum(1)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    norm_adj = inv_sqrt[:, None] * affinity * inv_sqrt[None, :]
    top = min(max_clusters + 1, n)
    # Largest eigenvalues of D^-1/2 A D^-1/2 = smallest of the normalised Laplacian I - D^-1/2 A D^-1/2.
    vals, vecs = eigh(norm_adj, subset_by_index=[n - top, n - 1])
    order = np.argsort(-vals)
    lap_vals, vecs = 1.0 - vals[order], vecs[:, order]
    if n_clusters is None:
        gaps = np.diff(lap_vals)[1:max_clusters]  # gap after 2, 3, ... clusters
        n_clusters = int(np.argmax(gaps)) + 2
    if not 2 <= n_clusters <= top - 1:
        raise XaiError(f"n_clusters must be between 2 and {top - 1}, got {n_clusters}")
    emb = vecs[:, :n_clusters]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    best_labels, best_inertia = None, np.inf
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        centroids, labels = kmeans2(emb, n_clusters, minit="++", seed=rng)
        inertia = float(((emb - centroids[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    # Number clusters by size (0 = largest) so that reruns and figures read the same way.
    sizes = np.bincount(best_labels, minlength=n_clusters)
    rank = np.empty(n_clusters, dtype=int)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(n_clusters)
    return SprayResult(labels=rank[best_labels], eigenvalues=lap_vals, embedding=vecs[:, 1:3].copy(),
                       n_clusters=n_clusters, eigengap=float(lap_vals[n_clusters] - lap_vals[n_clusters - 1]),
                       features=x)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two labelings, 0 for chance and 1 for identical partitions (Hubert & Arabie 1985)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise XaiError("the two labelings must have the same length")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(v):
        return (v * (v - 1) / 2).sum()

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = pairs(np.array([a.size]))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    return float((index - expected) / (maximum - expected)) if maximum != expected else 1.0
