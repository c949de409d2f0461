"""Training samplers, seeded and sharded over Ray Train / DDP workers.

* :class:`NaiveSampler` -- every image once per epoch (VehicleNet: "we treat all the datasets equally").
* :class:`ClassBalancedSampler` -- every class equally likely (a class, then an image of it).
* :class:`PKSampler` -- batches of P identities x K images (SSBVER sec. 3.2: batch-hard triplet needs
  positives and negatives in every batch); identities are split whole across workers.

The order of an epoch depends only on ``(seed, epoch)`` (``set_epoch``), never on global RNG state, so
every worker computes the same global plan and takes its own disjoint part of it.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from vreid.errors import VreidError


def _check_replicas(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise VreidError(f"sampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])


class NaiveSampler(Sampler[int]):
    """Every index of ``range(n)`` once per epoch, shuffled with ``(seed, epoch)`` when ``shuffle``.

    With ``num_replicas`` workers the epoch's permutation is split by position (``perm[rank::R]``), so
    the shards are disjoint. To give every worker the same number of steps (DDP needs it), when ``n`` is
    not a multiple of ``R`` the permutation is padded by repeating its first ``R - n % R`` entries
    (those few images are seen twice in that epoch), or, with ``drop_last``, its last ``n % R`` entries
    are dropped (those are skipped in that epoch). ``len(sampler)`` is the per-worker count.
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        _check_replicas(num_replicas, rank)
        if n < 1:
            raise VreidError(f"NaiveSampler: empty dataset (n={n})")
        self.n, self.seed, self.num_replicas, self.rank = int(n), int(seed), int(num_replicas), int(rank)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = -(-self.n // self.num_replicas)
        if self.num_samples == 0:
            raise VreidError(f"NaiveSampler: {n} images cannot feed {num_replicas} workers with drop_last")
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        order = _rng(self.seed, self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.total_size > self.n:
            order = np.concatenate([order, order[: self.total_size - self.n]])
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ClassBalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement: each draw picks a class uniformly, then one of its
    images uniformly; so every class is equally likely whatever its size.

    ``num_samples`` draws per epoch in total (default ``len(labels)``), rounded up to a multiple of
    ``num_replicas``; the epoch's draw sequence (a function of ``(seed, epoch)``) is split by position
    (``draws[rank::R]``), so workers get disjoint parts of one global sequence.
    """

    def __init__(self, labels: Sequence[int], seed: int, num_replicas: int = 1, rank: int = 0,
                 num_samples: Optional[int] = None):
        _check_replicas(num_replicas, rank)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise VreidError("ClassBalancedSampler: labels must be a non-empty 1-D array")
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        self.classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self._by_class = order  # indices grouped by class
        self._counts = np.bincount(inverse)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        total = len(labels) if num_samples is None else int(num_samples)
        if total < 1:
            raise VreidError(f"ClassBalancedSampler: num_samples must be >= 1, got {num_samples}")
        self.num_samples = -(-total // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        rng = _rng(self.seed, self.epoch)
        cls = rng.integers(0, len(self.classes), size=self.total_size)
        within = np.floor(rng.random(self.total_size) * self._counts[cls]).astype(np.int64)
        return self._by_class[self._starts[cls] + within]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class PKSampler(Sampler[list[int]]):
    """Batch sampler of P identities x K images (the "RandomIdentitySampler" of re-id toolboxes).

    Each epoch (seeded by ``(seed, epoch)``): every identity's images are shuffled and cut into chunks
    of K (an identity with fewer than K images is first sampled with replacement up to K; a last
    partial chunk is dropped), so an epoch covers about every image once. Identities are then split
    whole across the ``num_replicas`` workers (greedy on chunk counts, in a seeded random order, so the
    workers get similar numbers of images and an identity never appears on two workers in one epoch).
    Each worker builds batches by repeatedly drawing P distinct identities among its identities that
    still have chunks, and taking one chunk of each; all workers are cut to the same number of batches
    (DDP needs equal step counts). Yields lists of P*K dataset indices, identity by identity.
    """

    def __init__(self, labels: Sequence[int], P: int, K: int, seed: int, num_replicas: int = 1, rank: int = 0):
        _check_replicas(num_replicas, rank)
        if P < 1 or K < 1:
            raise VreidError(f"PKSampler: P and K must be >= 1, got P={P}, K={K}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise VreidError("PKSampler: labels must be a non-empty 1-D array")
        self.P, self.K = int(P), int(K)
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        self.ids, inverse = np.unique(labels, return_inverse=True)
        if len(self.ids) < self.P * self.num_replicas:
            raise VreidError(f"PKSampler: {len(self.ids)} identities cannot fill batches of P={self.P} "
                             f"identities on each of {self.num_replicas} workers")
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        self._members = np.split(order, np.cumsum(counts)[:-1])
        self._n_chunks = np.maximum(counts, self.K) // self.K
        self._plan_epoch: Optional[int] = None
        self._plan: list[list[list[int]]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def partition(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Identity positions (into ``self.ids``) of each worker for this epoch."""
        perm = rng.permutation(len(self.ids))
        # Stable sort by descending chunk count keeps the random order among equal counts.
        perm = perm[np.argsort(-self._n_chunks[perm], kind="stable")]
        load = np.zeros(self.num_replicas, dtype=np.int64)
        owned: list[list[int]] = [[] for _ in range(self.num_replicas)]
        for pid in perm:
            r = int(np.argmin(load))
            owned[r].append(int(pid))
            load[r] += self._n_chunks[pid]
        return [np.asarray(o, dtype=np.int64) for o in owned]

    def _build(self) -> list[list[list[int]]]:
        rng = _rng(self.seed, self.epoch)
        parts = self.partition(rng)
        plans: list[list[list[int]]] = []
        for r in range(self.num_replicas):
            chunks: dict[int, list[np.ndarray]] = {}
            for pid in parts[r]:
                idx = self._members[pid]
                if len(idx) < self.K:
                    idx = rng.choice(idx, size=self.K, replace=True)
                idx = rng.permutation(idx)
                n = len(idx) // self.K
                chunks[int(pid)] = [idx[i * self.K:(i + 1) * self.K] for i in range(n)]
            batches: list[list[int]] = []
            avail = [int(pid) for pid in parts[r] if chunks[int(pid)]]
            while len(avail) >= self.P:
                pick = rng.choice(len(avail), size=self.P, replace=False)
                batch: list[int] = []
                for j in pick:
                    batch.extend(chunks[avail[j]].pop().tolist())
                # Drop exhausted identities by swap-remove, highest position first so the others stay valid.
                for j in sorted(pick.tolist(), reverse=True):
                    if not chunks[avail[j]]:
                        avail[j] = avail[-1]
                        avail.pop()
                batches.append(batch)
            plans.append(batches)
        n = min(len(b) for b in plans)
        return [b[:n] for b in plans]

    def plan(self) -> list[list[list[int]]]:
        """This epoch's batches of every worker (all workers compute the same plan)."""
        if self._plan_epoch != self.epoch:
            self._plan = self._build()
            self._plan_epoch = self.epoch
        return self._plan

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.plan()[self.rank]])

    def __len__(self) -> int:
        return len(self.plan()[self.rank])
