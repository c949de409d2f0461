"""track2.txt writer and validator (FORMATS.md, CityFlow-ReID submission)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vreid.ensemble.submission import (SubmissionError, gallery_numbers, top_k_from_distance,
                                       validate_track2, write_track2)


def test_write_sorted_queries_and_file_name_numbers(tmp_path):
    rng = np.random.default_rng(0)
    n_q, n_g = 4, 130
    gallery = [f"{i:06d}.jpg" for i in range(n_g, 0, -1)]  # reversed on purpose: row 0 is 000130.jpg
    queries = ["000003.jpg", "000001.jpg", "000004.jpg", "000002.jpg"]
    dist = rng.random((n_q, n_g))
    ranking = top_k_from_distance(dist, k=100, chunk_size=3)
    np.testing.assert_array_equal(ranking, np.argsort(dist, axis=1, kind="stable")[:, :100])
    out = write_track2(ranking, queries, gallery, tmp_path / "track2.txt", provenance={"models": ["a"]})
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    # line 1 is query 000001.jpg = row 1; gallery row r has number n_g - r
    expect = [str(n_g - r) for r in ranking[1]]
    assert lines[0].split() == expect
    side = json.loads((tmp_path / "track2.provenance.json").read_text())
    assert side["gallery_numbering"] == "file_name" and side["models"] == ["a"]
    validate_track2(out, 4, n_g)


def test_fallback_numbering_is_sorted_position():
    nums, rule = gallery_numbers(["b.jpg", "a.jpg", "c.jpg"])
    assert rule == "sorted_position"
    np.testing.assert_array_equal(nums, [2, 1, 3])


def test_chunked_function_input():
    d = np.random.default_rng(1).random((7, 120))
    top = top_k_from_distance(lambda a, b: d[a:b], k=100, n_rows=7, chunk_size=2)
    np.testing.assert_array_equal(top, np.argsort(d, axis=1, kind="stable")[:, :100])


def _write(tmp_path, lines):
    p = tmp_path / "t.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("mutate, match", [
    (lambda ls: ls[:1], "expected 2 lines"),
    (lambda ls: [ls[0], " ".join(ls[1].split()[:99])], r"t.txt:2: expected 100 gallery numbers, found 99"),
    (lambda ls: [ls[0], ls[1].replace("5", "x", 1)], r"t.txt:2: .* is not an integer"),
    (lambda ls: [ls[0].replace(" 2 ", " 1 ", 1), ls[1]], r"t.txt:1: gallery number 1 appears more than once"),
    (lambda ls: [ls[0] .replace("100", "999", 1), ls[1]], r"t.txt:1: gallery number 999 outside \[1, 120\]"),
])
def test_validator_names_the_line(tmp_path, mutate, match):
    good = [" ".join(str(i) for i in range(1, 101))] * 2
    validate_track2(_write(tmp_path, good), 2, 120)
    with pytest.raises(SubmissionError, match=match):
        validate_track2(_write(tmp_path, mutate(good)), 2, 120)


def test_bad_ranking_is_rejected_before_writing(tmp_path):
    from vreid.errors import EvaluationInputError
    with pytest.raises(EvaluationInputError, match="needs 100"):
        write_track2(np.zeros((2, 50), int), ["1.jpg", "2.jpg"], [f"{i}.jpg" for i in range(1, 201)],
                     tmp_path / "track2.txt")
    assert not (tmp_path / "track2.txt").exists()
