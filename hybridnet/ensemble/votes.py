"""Combining members' predictions: soft vote (mean probabilities) and hard vote
(majority of the members' classes). Pure NumPy functions of stacked predictions.

Example:
    >>> probs = np.stack([m.predict(x) for m in members])     # (members, batch, classes)
    >>> soft_vote(probs).argmax(-1), hard_vote(probs)
"""
from __future__ import annotations

import numpy as np


def as_class_probabilities(probs) -> np.ndarray:
    """Class probabilities with a class axis last: a single sigmoid column ``p`` becomes
    the two columns ``(1 - p, p)``."""
    probs = np.asarray(probs)
    if probs.shape[-1] == 1:
        return np.concatenate([1.0 - probs, probs], axis=-1)
    return probs


def soft_vote(probs) -> np.ndarray:
    """The mean of the members' class probabilities.

    Args:
        probs: ``(members, batch, classes)`` probabilities (a sigmoid column is read
            as two classes).
    Returns:
        ``(batch, classes)`` probabilities.

    Example:
        >>> soft_vote([[[0.9, 0.1]], [[0.2, 0.8]], [[0.4, 0.6]]])
        array([[0.5, 0.5]])
    """
    probs = as_class_probabilities(probs)
    if probs.ndim < 2:
        raise ValueError(f"soft_vote: `probs` must be (members, batch, classes). "
                         f"Received: probs.shape={probs.shape}")
    return probs.mean(axis=0)


def hard_vote(probs) -> np.ndarray:
    """The class most members predict (each member votes for its most probable class);
    a tie goes to the lowest class index among the tied.

    Args:
        probs: ``(members, batch, classes)`` probabilities or scores.
    Returns:
        ``(batch,)`` int class indices.

    Example:
        >>> hard_vote([[[0.9, 0.1]], [[0.2, 0.8]], [[0.4, 0.6]]])
        array([1])
    """
    probs = as_class_probabilities(probs)
    if probs.ndim < 2:
        raise ValueError(f"hard_vote: `probs` must be (members, batch, classes). "
                         f"Received: probs.shape={probs.shape}")
    votes = probs.argmax(axis=-1)
    counts = np.stack([(votes == c).sum(axis=0) for c in range(probs.shape[-1])], axis=-1)
    return counts.argmax(axis=-1)


def class_labels(y, num_classes: int) -> np.ndarray:
    """Targets as class indices: one-hot rows are read by their argmax, a binary
    column by thresholding at 0.5."""
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] == num_classes and num_classes > 1:
        return y.argmax(axis=-1)
    if num_classes == 2 and np.issubdtype(y.dtype, np.floating):
        return (y.reshape(y.shape[0], -1)[:, 0] > 0.5).astype(np.int64)
    return y.reshape(y.shape[0]).astype(np.int64)


__all__ = ["as_class_probabilities", "class_labels", "hard_vote", "soft_vote"]
