"""Progress lines for the long steps a user waits on: training epochs and ensemble extraction.

Training runs inside Ray Train workers and the ensemble inside Ray Data actors, whose stdout Ray does
not forward to the driver by default (``vreid grid`` keeps ``log_to_driver=False`` to avoid Ray's log
noise). So progress goes through a small named actor, the *board*: workers :func:`post` lines (one
short call every N steps), and the driver, inside :func:`progress_board`, prints them as they arrive; that driver's stdout
is what ``ray job logs`` shows. Outside a board (a plain script, ``num_workers=0`` unit runs) a line is
printed where it was made.

* :class:`Rate`: done / total, items per second and ETA from a start time (pure; a clock can be given).
* :class:`EpochProgress`: the training loop's hook, one call per optimiser step; a line every
  ``every`` steps: ``[vreid] <label> stage1 epoch 3/60 step 120/500 (24%): 85.1 images/s, epoch ETA 4m28s``.
* :class:`RowProgress` (``add(n)`` from the Ray Data actors) with the driver's
  :meth:`Printer.watch_rows`: ``[vreid] ensemble: extracted 1,200/19,342 images (6%), 40.1 images/s, ETA 7m32s``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

BOARD_NAME = "vreid-progress"
DEFAULT_EVERY_STEPS = 50


def format_duration(seconds: float) -> str:
    """``75 -> '1m15s'``, ``3725 -> '1h02m'``, ``9 -> '9s'``; unknown (inf/nan) -> ``'?'``."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class Rate:
    """Throughput and ETA of ``total`` items from ``start`` (``clock`` seconds)."""

    total: int
    clock: Callable[[], float] = time.perf_counter
    start: float = field(default=-1.0)
    done: int = 0

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.clock()

    def add(self, n: int) -> None:
        self.done += int(n)

    def per_second(self) -> float:
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float:
        rate = self.per_second()
        if rate <= 0:
            return float("inf")
        return max(self.total - self.done, 0) / rate

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


# -- the board: workers post, the driver prints ------------------------------------------------------
class _Board:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.rows: dict[str, int] = {}

    def post(self, line: str) -> None:
        self.lines.append(line)

    def reset_rows(self, key: str) -> None:
        self.rows.pop(key, None)

    def add_rows(self, key: str, n: int) -> None:
        self.rows[key] = self.rows.get(key, 0) + int(n)

    def drain(self) -> tuple[list[str], dict[str, int]]:
        lines, self.lines = self.lines, []
        return lines, dict(self.rows)


_board_handle = None


def _board():
    """The board actor when one is running in this Ray job, else None (never starts Ray)."""
    global _board_handle
    if _board_handle is not None:
        return _board_handle
    try:
        import ray

        if not ray.is_initialized():
            return None
        _board_handle = ray.get_actor(BOARD_NAME)
    except (ValueError, ImportError):
        return None
    return _board_handle


def _send(call) -> bool:
    """Wait (briefly) for a board call: a line is on the board before the worker goes on, so it is not
    lost when the driver prints its last lines right after the work returns."""
    import ray

    try:
        ray.get(call, timeout=10)
        return True
    except Exception:  # the board is gone or slow: progress is never worth failing the work
        return False


def post(line: str) -> None:
    """Send a progress line to the driver's board (or print it here when there is none)."""
    board = _board()
    if board is None or not _send(board.post.remote(line)):
        print(line, flush=True)


class Printer:
    """The driver side of a board: polls it every ``interval`` seconds and prints what arrived."""

    def __init__(self, board, interval: float, emit: Callable[[str], None]):
        self.board = board
        self.interval = interval
        self.emit = emit
        self.watched: dict[str, Rate] = {}
        self.labels: dict[str, str] = {}
        self.last_rows: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vreid-progress", daemon=True)

    def watch_rows(self, key: str, total: int, label: str) -> None:
        import ray

        ray.get(self.board.reset_rows.remote(key))
        self.watched[key] = Rate(total)
        self.labels[key] = label

    def poll(self) -> None:
        import ray

        lines, rows = ray.get(self.board.drain.remote())
        for line in lines:
            self.emit(line)
        for key, done in rows.items():
            if key in self.watched and done != self.last_rows.get(key):
                rate = self.watched[key]
                rate.done = done
                self.last_rows[key] = done
                self.emit(row_line(self.labels[key], rate))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the board went away (cluster shutting down): stop quietly
                return

    def start(self) -> "Printer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.poll()  # the last lines


def row_line(label: str, rate: Rate) -> str:
    return (f"[vreid] {label} {rate.done:,}/{rate.total:,} images ({rate.percent():.0f}%), "
            f"{rate.per_second():.1f} images/s, ETA {format_duration(rate.eta_seconds())}")


_owned_board = None  # the handle that keeps this driver's board alive (a named actor lives while its creator holds it)


def _live(board) -> bool:
    import ray

    try:
        ray.get(board.drain.remote(), timeout=30)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def progress_board(interval: float = 2.0, emit: Callable[[str], None] = lambda s: print(s, flush=True)) -> Iterator[Printer]:
    """Run a board for the duration of the block (needs Ray initialised); yields its :class:`Printer`.

    The board actor is created once per driver and kept (the demo's grid, then its ensemble, share it);
    a board another driver of this job owns is used as it is."""
    global _board_handle, _owned_board
    import ray

    board = _owned_board if _owned_board is not None and _live(_owned_board) else None
    if board is None:
        try:
            board = ray.get_actor(BOARD_NAME)
        except ValueError:
            board = _owned_board = ray.remote(num_cpus=0)(_Board).options(name=BOARD_NAME).remote()
            ray.get(board.drain.remote())  # registered and running before any worker looks it up
    _board_handle = board
    printer = Printer(board, interval, emit).start()
    try:
        yield printer
    finally:
        printer.stop()


# -- the hooks ---------------------------------------------------------------------------------------
class EpochProgress:
    """One epoch's progress inside the training loop: call :meth:`step` after every optimiser step.

    ``images`` counts this worker's images; with ``world`` workers the line reports the whole
    trainer's rate (``world`` x this worker's), as the epoch's ``images_per_s`` metric does.
    """

    def __init__(self, label: str, stage: str, epoch: int, epochs: int, steps: int, world: int = 1,
                 every: int = DEFAULT_EVERY_STEPS, clock: Callable[[], float] = time.perf_counter,
                 emit: Optional[Callable[[str], None]] = None):
        self.label = label
        self.stage = stage
        self.epoch = epoch
        self.epochs = epochs
        self.world = max(int(world), 1)
        self.every = max(int(every), 0)
        self.steps = Rate(max(int(steps), 1), clock=clock)
        self.images = 0
        self.emit = emit or post

    def step(self, n_images: int) -> Optional[str]:
        self.steps.add(1)
        self.images += int(n_images)
        s = self.steps
        if not self.every or s.done % self.every or s.done >= s.total:
            return None
        elapsed = s.clock() - s.start
        rate = self.images * self.world / elapsed if elapsed > 0 else 0.0
        line = (f"[vreid] {self.label} {self.stage} epoch {self.epoch}/{self.epochs} step {s.done}/{s.total} "
                f"({s.percent():.0f}%): {rate:.1f} images/s, epoch ETA {format_duration(s.eta_seconds())}").replace("  ", " ")
        self.emit(line)
        return line


class RowProgress:
    """Rows done, counted on the board under ``key`` (Ray Data actors call :meth:`add` per batch)."""

    def __init__(self, key: str):
        self.key = key

    def add(self, n: int) -> None:
        board = _board()
        if board is not None:
            _send(board.add_rows.remote(self.key, int(n)))


class StepProgressCallback:
    """Engine callback (``vreid.train.engine``'s ``on_step_end``): an :class:`EpochProgress` per epoch,
    fed one optimiser step at a time; only rank 0 prints (``every=0`` elsewhere)."""

    def __init__(self, label: str, stage: str, epochs: int, steps: int, world: int = 1, rank: int = 0,
                 every: int = DEFAULT_EVERY_STEPS):
        self.label, self.stage, self.epochs, self.steps, self.world = label, stage, epochs, steps, world
        self.every = every if rank == 0 else 0
        self._epoch: Optional[int] = None
        self._progress: Optional[EpochProgress] = None

    def on_step_end(self, ctx) -> None:
        if self._progress is None or ctx.epoch != self._epoch:
            self._epoch = ctx.epoch
            self._progress = EpochProgress(self.label, self.stage, ctx.epoch + 1, self.epochs, self.steps,
                                           self.world, every=self.every)
        self._progress.step(int(ctx.batch[1].shape[0]))
