"""Progress lines (vreid/progress.py): the numbers against hand-computed values with a fake clock, and
the board carrying a worker's lines and row counts to the driver on the real Ray cluster."""

from __future__ import annotations

import pytest

from vreid.progress import EpochProgress, Rate, format_duration, row_line


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_duration():
    assert [format_duration(x) for x in (0, 9.4, 75, 3599, 3725, float("inf"))] == ["0s", "9s", "1m15s", "59m59s", "1h02m", "?"]


def test_rate_and_eta_by_hand():
    clock = Clock()
    r = Rate(total=100, clock=clock)
    clock.t += 4.0
    r.add(20)  # 20 in 4 s: 5/s, 80 left: 16 s
    assert r.per_second() == pytest.approx(5.0)
    assert r.eta_seconds() == pytest.approx(16.0)
    assert r.percent() == pytest.approx(20.0)
    assert row_line("ensemble: extracted", r) == "[vreid] ensemble: extracted 20/100 images (20%), 5.0 images/s, ETA 16s"


def test_epoch_progress_every_n_steps():
    clock = Clock()
    lines = []
    p = EpochProgress("bs32-lr0.03", "stage1", 3, 60, steps=10, world=2, every=4, clock=clock, emit=lines.append)
    for _ in range(10):
        clock.t += 0.5  # one step of 32 images per worker every 0.5 s
        p.step(32)
    # lines after steps 4 and 8 (not after the last: the epoch's own line follows)
    assert len(lines) == 2
    # step 4: 4 x 32 x 2 workers in 2 s = 128 images/s; 6 steps left at 2 steps/s = 3 s
    assert lines[0] == "[vreid] bs32-lr0.03 stage1 epoch 3/60 step 4/10 (40%): 128.0 images/s, epoch ETA 3s"
    assert lines[1].endswith("step 8/10 (80%): 128.0 images/s, epoch ETA 1s")


def test_epoch_progress_off_on_other_ranks():
    lines = []
    p = EpochProgress("x", "stage1", 1, 1, steps=5, every=0, emit=lines.append)
    for _ in range(5):
        p.step(8)
    assert lines == []


def test_board_carries_worker_lines_and_rows_to_the_driver(ray_cluster):
    import ray

    from vreid.progress import RowProgress, post, progress_board

    @ray.remote(num_cpus=0.1)
    def work():
        post("[vreid] hello from a worker")
        RowProgress("rows-test").add(30)
        RowProgress("rows-test").add(12)
        return True

    seen = []
    with progress_board(interval=0.2, emit=seen.append) as board:
        board.watch_rows("rows-test", 50, "test: done")
        assert ray.get(work.remote())
    assert "[vreid] hello from a worker" in seen
    rows = [line for line in seen if line.startswith("[vreid] test: done")]
    assert rows and rows[-1].startswith("[vreid] test: done 42/50 images (84%)"), seen


def test_board_survives_two_blocks_in_one_driver(ray_cluster):
    """The demo runs the grid, then the ensemble, in one process: the second block reuses the board (it
    died with the first block's handle before: ActorDiedError in the ensemble)."""
    import ray

    from vreid.progress import post, progress_board

    @ray.remote(num_cpus=0.1)
    def work(text):
        post(text)
        return True

    for text in ("first block", "second block"):
        seen = []
        with progress_board(interval=0.2, emit=seen.append) as board:
            board.watch_rows("rows-two", 10, "two")
            assert ray.get(work.remote(text))
        assert text in seen, seen
