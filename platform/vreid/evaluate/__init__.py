"""Evaluation: feature extraction, metrics, dataset protocols, re-ranking and post-processing.

The array-level functions are importable from here without torch; feature extraction
(:mod:`vreid.evaluate.features`) imports torch when used.
"""

from vreid.evaluate.metrics import evaluate_features, evaluate_rank

__all__ = ["evaluate_rank", "evaluate_features"]
