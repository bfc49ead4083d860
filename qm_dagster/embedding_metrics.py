"""Metrics of each image or object computed from the version's embeddings as a whole.

- ``diversity`` (Encord Active's "Image Diversity", prototypes after Sorscher et al., 2022):
  k-means on the image embeddings; each image's distance to its cluster's centroid; and a
  rank for "what to label first" that takes the most typical image of every cluster, then the
  second most typical of every cluster, and so on (clusters in label order within a round), so
  that the first k images cover every cluster. ``value`` is the rank over n - 1: 0 = label first.
- ``neighbour_agreement`` (Encord Active's "Object Annotation Quality"): the share of an
  object's k nearest objects in embedding space that carry its class; low = an object that
  looks like another class, a suspected label error with no model needed. Next to it, the
  most common other class among those neighbours and its share: where that share is larger,
  the neighbours vote for another class (the label-error queue's ``neighbour_disagreement``).
  As good as the embedding: with the built-in one, planted class swaps among real objects rank
  well above chance but far from perfectly (the tests measure it); a model of your own
  (``embedding_provider``) does better.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qm_dagster.neighbours import knn

DEFAULT_CLUSTERS = 10  # without classes to count
FIT_ROWS = 200_000  # k-means is fitted on at most this many images (fixed-seed sample)
AGREEMENT_NEIGHBOURS = 10


def diversity_clusters(configured: int, classes: int) -> int:
    """The number of clusters: the configured one, else the number of classes, else 10."""
    return configured if configured > 0 else (classes if classes > 1 else DEFAULT_CLUSTERS)


def diversity(vectors: np.ndarray, clusters: int, seed: int = 0) -> pd.DataFrame:
    """Per row of ``vectors``: ``cluster`` (scikit-learn's KMeans, ``random_state=seed``),
    ``centroid_distance``, ``rank`` (0 first) and ``value`` = rank / (n - 1). Above
    ``FIT_ROWS`` rows the clusters are fitted on a sample and every row is assigned to its
    nearest centroid."""
    from sklearn.cluster import KMeans

    n = len(vectors)
    columns = ["cluster", "centroid_distance", "rank", "value"]
    if n == 0:
        return pd.DataFrame(columns=columns)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(clusters, n))
    model = KMeans(n_clusters=k, random_state=seed, n_init=1)
    if n > FIT_ROWS:
        sample = np.sort(np.random.default_rng(seed).choice(n, FIT_ROWS, replace=False))
        labels = model.fit(x[sample]).predict(x)
    else:
        labels = model.fit(x).labels_
    distance = np.linalg.norm(x - model.cluster_centers_[labels], axis=1).astype(np.float64)
    rank = interleaved_rank(labels, distance)
    return pd.DataFrame(
        {
            "cluster": labels.astype(np.int64),
            "centroid_distance": distance,
            "rank": rank,
            "value": rank / max(n - 1, 1),
        }
    )


def interleaved_rank(labels: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Each row's place when clusters take turns (in label order) giving their nearest
    remaining row to the centroid (ties by row order)."""
    rows = np.arange(len(labels))
    by_cluster = np.lexsort((rows, distance, labels))
    sorted_labels = labels[by_cluster]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    turn = np.empty(len(labels), np.int64)
    turn[by_cluster] = np.arange(len(labels)) - starts  # place within its cluster
    order = np.lexsort((labels, turn))
    rank = np.empty(len(labels), np.int64)
    rank[order] = rows
    return rank


VOTE_BLOCK = 65_536  # rows whose neighbour votes are counted at once (k x k comparisons each)


def neighbour_agreement(
    vectors: np.ndarray, classes: np.ndarray, neighbours: int = AGREEMENT_NEIGHBOURS
) -> pd.DataFrame:
    """Per row, among its ``neighbours`` nearest other rows (``neighbours.knn``): ``value``, the
    share whose class equals its own, and ``other_class`` / ``other_share``, the most common
    other class (the smallest on ties) and its share (-1 and 0 when there is none); NaN value
    for a row with no neighbour."""
    classes = np.asarray(classes, np.int64)
    n = len(classes)
    if n < 2:
        return pd.DataFrame(
            {"value": np.full(n, np.nan), "other_class": np.full(n, -1), "other_share": 0.0}
        )
    _, found = knn(np.asarray(vectors, np.float32), neighbours)
    valid = found >= 0
    votes = np.where(valid, classes[np.maximum(found, 0)], -1)
    counted = valid.sum(axis=1)
    same = (votes == classes[:, None]).sum(axis=1)
    other, other_votes = _most_common_other(votes, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(counted > 0, same / counted, np.nan)
        share = np.where(counted > 0, other_votes / counted, 0.0)
    return pd.DataFrame({"value": value, "other_class": other, "other_share": share})


def _most_common_other(votes: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``votes`` (class per neighbour, -1 = none): the most frequent class other
    than ``own`` (smallest on ties, -1 if none) and its count; ``VOTE_BLOCK`` rows at a time."""
    other = np.full(len(votes), -1, np.int64)
    count = np.zeros(len(votes), np.int64)
    for start in range(0, len(votes), VOTE_BLOCK):
        block = np.sort(votes[start : start + VOTE_BLOCK], axis=1)
        mine = own[start : start + VOTE_BLOCK, None]
        tally = (block[:, :, None] == block[:, None, :]).sum(axis=2)
        tally[(block < 0) | (block == mine)] = 0
        best = tally.argmax(axis=1)  # sorted rows: the first maximum is the smallest class
        rows = np.arange(len(block))
        count[start : start + len(block)] = tally[rows, best]
        other[start : start + len(block)] = np.where(tally[rows, best] > 0, block[rows, best], -1)
    return other, count
