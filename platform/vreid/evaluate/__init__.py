"""Evaluation: feature extraction, metrics, dataset protocols, re-ranking and post-processing.

The array-level functions are importable from here without torch; feature extraction
(:mod:`vreid.evaluate.features`) imports torch when used.
"""

from vreid.evaluate.metrics import evaluate_features, evaluate_rank
from vreid.evaluate.rerank import re_ranking, re_ranking_features

__all__ = ["evaluate_rank", "evaluate_features", "re_ranking", "re_ranking_features"]
