"""VehicleID's seeded gallery draws: the reader (data/vehicleid.py) and the protocol
(evaluate/protocols.py) pick the same galleries, by one documented rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vreid.data.vehicleid import read_vehicleid
from vreid.evaluate.protocols import vehicleid_draw

COUNTS = [3, 4, 2, 5, 3]  # images of ids 10, 20, 30, 40, 50


def _reference_picks(counts, seed, draw):
    """The rule as README / the docstrings state it: a generator numpy.random.default_rng([seed, draw]);
    for each id in ascending order, one call integers(n) picks the gallery image's index among that id's
    n images sorted by image name."""
    rng = np.random.default_rng([seed, draw])
    return [int(rng.integers(n)) for n in counts]


def _root(tmp_path):
    from PIL import Image

    (tmp_path / "image").mkdir()
    (tmp_path / "train_test_split").mkdir()
    lines = []
    k = 0
    for vid, n in zip((10, 20, 30, 40, 50), COUNTS):
        for _ in range(n):
            name = f"{(k * 7919) % 1000:07d}"  # names not in id order
            Image.new("RGB", (4, 4)).save(tmp_path / "image" / f"{name}.jpg")
            lines.append(f"{name} {vid}")
            k += 1
    rng = np.random.default_rng(3)
    lines = [lines[i] for i in rng.permutation(len(lines))]  # the list file is not sorted either
    (tmp_path / "train_test_split" / "test_list_800.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "train_test_split" / "train_list.txt").write_text(lines[0].split()[0] + " 999\n")
    return tmp_path


def _gallery_index_per_id(names, ids, gallery_names):
    out = []
    for vid in sorted(set(ids)):
        own = sorted(n for n, i in zip(names, ids) if i == vid)
        chosen = [j for j, n in enumerate(own) if n in gallery_names]
        assert len(chosen) == 1
        out.append(chosen[0])
    return out


def test_reader_and_protocol_draw_the_documented_galleries(tmp_path):
    root = _root(tmp_path)
    for seed, draw in ((0, 0), (0, 1), (5, 3)):
        expect = _reference_picks(COUNTS, seed, draw)
        df = read_vehicleid(root, "small", seed=seed, draw=draw, include_train=False)
        names, ids = df.image_name.tolist(), df.vehicle_id.tolist()
        reader = _gallery_index_per_id(names, ids, set(df.image_name[df.split == "gallery"]))
        # the protocol, on the same rows in a shuffled order
        shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
        q, g = vehicleid_draw(shuffled, seed, draw)
        proto = _gallery_index_per_id(names, ids, set(shuffled.image_name[g]))
        assert reader == expect and proto == expect, (seed, draw, reader, proto, expect)
        assert len(q) + len(g) == len(df) and len(g) == len(COUNTS)


def test_hand_checked_draw_seed0_draw0():
    # the case: counts [3, 4, 2, 5, 3], seed 0, draw 0
    assert _reference_picks(COUNTS, 0, 0) == [2, 2, 1, 1, 0]  # the value quoted in issue 11
    df = pd.DataFrame({"image_name": [f"{v}_{j}" for v, n in zip("abcde", COUNTS) for j in range(n)],
                       "vehicle_id": [i for i, n in enumerate(COUNTS) for _ in range(n)]})
    _, g = vehicleid_draw(df, 0, 0)
    starts = np.cumsum([0] + COUNTS[:-1])
    assert (g - starts).tolist() == _reference_picks(COUNTS, 0, 0)
