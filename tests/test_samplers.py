"""Samplers: seeded, every image once (naive), balanced classes, P x K batches, disjoint worker shards."""

from collections import Counter

import numpy as np
import pytest

from vreid.data.samplers import ClassBalancedSampler, NaiveSampler, PKSampler
from vreid.errors import VreidError


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


# -- naive --------------------------------------------------------------------------------------------
def test_naive_single_worker_every_image_once_and_seeded():
    s = NaiveSampler(50, seed=7)
    e0 = _epoch(s, 0)
    assert sorted(e0) == list(range(50)) and len(s) == 50
    assert e0 != list(range(50))  # shuffled
    assert _epoch(NaiveSampler(50, seed=7), 0) == e0  # same seed + epoch -> same order
    assert _epoch(s, 1) != e0  # a new epoch reshuffles
    assert _epoch(NaiveSampler(50, seed=8), 0) != e0
    assert _epoch(NaiveSampler(5, seed=0, shuffle=False), 3) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("replicas", [2, 3])
def test_naive_shards_disjoint_and_cover(replicas):
    n = 12  # divisible by 2 and 3: exact partition
    shards = [_epoch(NaiveSampler(n, seed=1, num_replicas=replicas, rank=r), 4) for r in range(replicas)]
    assert all(len(s) == n // replicas for s in shards)
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))


@pytest.mark.parametrize("replicas", [2, 3])
def test_naive_padding_and_drop_last(replicas):
    n = 10
    samplers = [NaiveSampler(n, seed=2, num_replicas=replicas, rank=r) for r in range(replicas)]
    shards = [_epoch(s, 0) for s in samplers]
    per = -(-n // replicas)
    assert all(len(s) == per == len(smp) for s, smp in zip(shards, samplers))
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(n))  # covered
    pad = per * replicas - n
    order = samplers[0].global_order()
    # the padding repeats the first `pad` entries of the epoch's permutation, nothing else repeats
    assert sorted(i for i, c in counts.items() if c == 2) == sorted(order[:pad].tolist())
    assert sum(counts.values()) == n + pad
    dropped = [_epoch(NaiveSampler(n, seed=2, num_replicas=replicas, rank=r, drop_last=True), 0)
               for r in range(replicas)]
    flat = [i for s in dropped for i in s]
    assert len(flat) == len(set(flat)) == (n // replicas) * replicas


# -- class-balanced -----------------------------------------------------------------------------------
def test_class_balanced_equal_class_probability():
    labels = np.array([0] * 1 + [1] * 10 + [2] * 100)
    s = ClassBalancedSampler(labels, seed=3, num_samples=30000)
    idx = np.array(_epoch(s, 0))
    freq = np.bincount(labels[idx], minlength=3) / len(idx)
    assert freq == pytest.approx([1 / 3] * 3, abs=0.02)
    # within class 2 every image is drawn (uniform within a class)
    assert set(idx[labels[idx] == 2].tolist()) == set(range(11, 111))
    assert _epoch(ClassBalancedSampler(labels, seed=3, num_samples=30000), 0) == idx.tolist()


@pytest.mark.parametrize("replicas", [2, 3])
def test_class_balanced_shards_are_disjoint_parts_of_one_sequence(replicas):
    labels = np.repeat(np.arange(5), [1, 2, 3, 4, 10])
    samplers = [ClassBalancedSampler(labels, seed=9, num_replicas=replicas, rank=r, num_samples=20)
                for r in range(replicas)]
    shards = [_epoch(s, 2) for s in samplers]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(samplers[0]) == -(-20 // replicas)
    glob = samplers[0].global_order()
    for r, shard in enumerate(shards):
        assert shard == glob[r::replicas].tolist()


# -- P x K --------------------------------------------------------------------------------------------
def _pk_labels():
    # 14 identities with 1..9 images (some fewer than K = 4)
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 4, 4, 8, 12, 3]
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_pk_batches_identities_whole_per_worker(replicas):
    labels = _pk_labels()
    P, K = 2, 4
    samplers = [PKSampler(labels, P=P, K=K, seed=5, num_replicas=replicas, rank=r) for r in range(replicas)]
    for epoch in (0, 1):
        per_rank = [_epoch(s, epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # equal step counts on every worker
        assert len(per_rank[0]) == len(samplers[0]) > 0
        ids_per_rank = []
        for batches in per_rank:
            ids = set()
            for batch in batches:
                assert len(batch) == P * K
                blabels = labels[batch]
                for j in range(P):  # identity by identity, K images each
                    assert len(set(blabels[j * K:(j + 1) * K])) == 1
                assert len(set(blabels)) == P  # P distinct identities
                ids |= set(blabels.tolist())
            ids_per_rank.append(ids)
        for a in range(replicas):
            for b in range(a + 1, replicas):
                assert not ids_per_rank[a] & ids_per_rank[b]  # an identity lives on one worker only


def test_pk_small_identity_sampled_with_replacement_and_no_repeats_otherwise():
    labels = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1])  # id 0 has 1 image, id 1 has 8
    s = PKSampler(labels, P=2, K=4, seed=0)
    batches = _epoch(s, 0)
    assert len(batches) == 1
    b = batches[0]
    id0 = [i for i in b if labels[i] == 0]
    assert id0 == [0, 0, 0, 0]  # with replacement up to K
    id1 = [i for i in b if labels[i] == 1]
    assert len(set(id1)) == 4  # enough images: without replacement


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_pk_covers_every_image_once_when_it_can(replicas):
    # 12 identities of exactly K images, P divides the identities per worker: every image exactly once
    K, P = 2, 2
    labels = np.repeat(np.arange(12), K)
    batches = []
    for r in range(replicas):
        batches += _epoch(PKSampler(labels, P=P, K=K, seed=11, num_replicas=replicas, rank=r), 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(labels)))


def test_pk_seeded_and_epoch_dependent():
    labels = _pk_labels()
    a = _epoch(PKSampler(labels, P=2, K=2, seed=1, num_replicas=2, rank=1), 0)
    b = _epoch(PKSampler(labels, P=2, K=2, seed=1, num_replicas=2, rank=1), 0)
    c = _epoch(PKSampler(labels, P=2, K=2, seed=1, num_replicas=2, rank=1), 1)
    assert a == b and a != c


def test_pk_rejects_too_few_identities():
    with pytest.raises(VreidError, match="identities"):
        PKSampler(np.array([0, 0, 1, 1]), P=2, K=2, seed=0, num_replicas=2)
    with pytest.raises(VreidError, match="rank"):
        NaiveSampler(5, seed=0, num_replicas=2, rank=2)
