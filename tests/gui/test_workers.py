"""The thread-worker glue: events arrive in order, results and cancellation are reported once."""

import time

import pytest

from napari_decrappify.progress import Cancelled

pytestmark = pytest.mark.gui


class _Cancelled(Cancelled, RuntimeError):
    """Like tiling.RestoreCancelled: a Cancelled (a cancellation is known by its class), and a
    RuntimeError, which superqt would otherwise swallow."""


def _count(n, *, progress, cancel, fail_at=None):
    for i in range(n):
        if cancel.is_set():
            raise _Cancelled("stopped")
        if i == fail_at:
            raise ValueError("bad input at 3")
        progress({"event": "batch", "iteration": i + 1, "total": n})
        if i % 5 == 0:
            progress({"event": "tiles", "done": i, "total": n})
        time.sleep(0.001 * (i % 3))
    return n


def test_events_in_order_and_result(make_napari_viewer, qtbot):
    from napari_decrappify._napari._workers import CoreJob

    make_napari_viewer()  # napari's progress bars live in the viewer's activity dock
    seen, results = [], []
    job = CoreJob(_count, 200, on_event=lambda e: seen.append(e), on_result=results.append,
                  description="count")
    qtbot.waitUntil(lambda: job.finished, timeout=20_000)
    iterations = [e["iteration"] for e in seen if e["event"] == "batch"]
    assert iterations == list(range(1, 201))  # every batch event, in order
    assert job.status == "done" and results == [200]
    assert job.pbar is None  # closed


def test_cancel_and_errors_are_reported_not_swallowed(make_napari_viewer, qtbot):
    from napari_decrappify._napari._workers import CoreJob

    make_napari_viewer()
    outcome = []
    job = CoreJob(_count, 10_000, on_result=lambda r: outcome.append(("result", r)),
                  on_cancelled=lambda: outcome.append(("cancelled",)),
                  on_error=lambda e: outcome.append(("error", e)))
    qtbot.waitUntil(lambda: len(job.events) > 3, timeout=20_000)
    job.cancel()
    qtbot.waitUntil(lambda: job.finished, timeout=20_000)
    assert job.status == "cancelled" and outcome == [("cancelled",)]

    outcome.clear()
    job = CoreJob(_count, 10, fail_at=3, on_result=lambda r: outcome.append(("result", r)),
                  on_error=lambda e: outcome.append(("error", str(e))))
    qtbot.waitUntil(lambda: job.finished, timeout=20_000)
    assert job.status == "failed" and outcome == [("error", "bad input at 3")]


def test_compute_array_stops_between_dask_tasks():
    import threading

    import dask
    import dask.array as da
    import numpy as np

    from napari_decrappify._napari._workers import compute_array, is_cancellation

    base = np.arange(8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)
    cancel, calls, press = threading.Event(), [], [True]

    def block(x):
        calls.append(1)
        if press[0]:
            cancel.set()  # the user presses Cancel while the first chunk is computed
        return x

    arr = da.from_array(base, chunks=(1, 16, 16)).map_blocks(
        block, dtype=base.dtype, meta=np.empty((0, 0, 0), base.dtype))
    with dask.config.set(scheduler="sync"):
        with pytest.raises(RuntimeError) as err:
            compute_array(arr, cancel)
        assert is_cancellation(err.value) and len(calls) == 1  # the 7 other chunks: skipped
        press[0] = False
        cancel.clear()
        calls.clear()
        np.testing.assert_array_equal(compute_array(arr, cancel), base)  # not cancelled
        assert len(calls) == 8


def test_activity_panel_bar_and_dock_progress_line_follow_the_events(make_napari_viewer, qtbot):
    """napari's activity-panel bar stayed at 0% while its text said 2/25: the bar's value event
    was never emitted (``n`` was set, not ``update()``d). The dock's own line shows what runs,
    the bar and an ETA."""
    import threading

    from napari_decrappify._napari._progress import JobProgress, eta_seconds, format_seconds
    from napari_decrappify._napari._workers import CoreJob

    make_napari_viewer()
    gate = threading.Event()

    def tiles(*, progress, cancel):
        for i in range(1, 26):
            progress({"event": "tiles", "done": i, "total": 25})
            if i == 2:
                gate.wait(10)  # held at 2/25 while the test looks
        return 25

    line = JobProgress()
    values = []
    job = CoreJob(tiles, description="Restoring", watchers=[line], start=False)
    job.start()
    job.pbar.events.value.connect(lambda e: values.append(e.value))
    qtbot.waitUntil(lambda: job.pbar is not None and job.pbar.n == 2, timeout=10_000)
    assert values and values[-1] == 2  # the activity panel's bar moved
    assert not line.bar.isHidden() and line.bar.value() == 2 and line.bar.maximum() == 25
    assert "Restoring: tiles 2/25" in line.text and "left" in line.text
    gate.set()
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert line.bar.isHidden() and "done" in line.text
    assert eta_seconds({"done": 5, "total": 25}, 10.0) == 40.0
    assert eta_seconds({"eta": 3.0}, 1.0) == 3.0 and eta_seconds({"event": "x"}, 1.0) is None
    assert format_seconds(42) == "42 s" and format_seconds(185) == "3 min 05 s"
