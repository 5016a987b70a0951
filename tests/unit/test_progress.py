"""Typed progress events read as the dicts the core sent before; one rate/ETA counter; every
cancellation is a ``Cancelled`` and is recognised by its class, not its name."""

import pickle
import threading

import pytest

from napari_decrappify.progress import (
    Batch,
    Cancelled,
    Done,
    Epoch,
    Progress,
    RateCounter,
    RateProgress,
    Recovered,
    Stopped,
)


@pytest.mark.parametrize(("event", "old"), [
    (Progress("scoring", 2, 6), {"event": "scoring", "done": 2, "total": 6}),
    (Progress("pairs", 6, 6, extra={"stage": "hr"}),
     {"event": "pairs", "stage": "hr", "done": 6, "total": 6}),
    (Progress("tracing the network"), {"event": "tracing the network"}),
    (RateProgress("tiles", 3, 8, mpix_per_s=1.5, eta=2.0),
     {"event": "tiles", "done": 3, "total": 8, "mpix_per_s": 1.5, "eta": 2.0}),
    (Batch(epoch=0, batch=1, iteration=2, total=10, loss=0.5, elapsed=1.0, eta=4.0),
     {"event": "batch", "epoch": 0, "batch": 1, "iteration": 2, "total": 10, "loss": 0.5,
      "elapsed": 1.0, "eta": 4.0}),
    (Epoch(epoch=1, elapsed=9.0, extra={"train_loss": 0.3, "valid_loss": 0.4, "batch_psnr": 25.0}),
     {"train_loss": 0.3, "valid_loss": 0.4, "batch_psnr": 25.0, "event": "epoch", "epoch": 1,
      "elapsed": 9.0}),
    (Recovered(epoch=3, train_loss=1e6, back_to_epoch=2, lr_max=1e-4),
     {"event": "recovered", "epoch": 3, "train_loss": 1e6, "back_to_epoch": 2, "lr_max": 1e-4}),
    (Stopped(stop_reason="cancelled", seconds=3.0, iterations=7),
     {"event": "stopped", "stop_reason": "cancelled", "seconds": 3.0, "iterations": 7}),
    (Done(stop_reason="completed", seconds=3.0, path=None),
     {"event": "done", "stop_reason": "completed", "seconds": 3.0, "path": None}),
])
def test_events_are_read_only_mappings_equal_to_their_old_dicts(event, old):
    assert event == old and old == event and dict(event) == old
    assert len(event) == len(old) and set(event) == set(old)
    assert event["event"] == old["event"] and event.get("eta") == old.get("eta")
    assert ("done" in event) == ("done" in old) and event.get("nothing", 5) == 5
    with pytest.raises(KeyError):
        event["nothing"]
    with pytest.raises(AttributeError):  # frozen
        event.extra = {}
    assert pickle.loads(pickle.dumps(event)) == old  # crosses processes (dask, exports)
    assert event != {**old, "event": "other"}


def test_a_stage_without_a_count_has_no_done_or_total():
    stage = Progress("measuring")
    assert "done" not in stage and "total" not in stage and stage.get("done") is None
    assert Progress("scoring", 0, 2)["done"] == 0  # 0 is a count, not an absence


def _clock():
    now = [100.0]
    return now, lambda: now[0]


def test_rate_counter_rate_and_eta_with_a_fake_clock():
    now, clock = _clock()
    seen = []
    counter = RateCounter("chunks", 4, seen.append, clock=clock)  # the clock starts now
    now[0] += 2.0
    first = counter.tick(1_000_000)
    assert first is seen[-1] and isinstance(first, RateProgress)
    assert first == {"event": "chunks", "done": 1, "total": 4, "mpix_per_s": 0.5, "eta": 6.0}
    now[0] += 2.0
    second = counter.tick(3_000_000)
    assert second["mpix_per_s"] == pytest.approx(1.0) and second["eta"] == pytest.approx(4.0)
    for _ in range(3):  # past total (a lazy restoration recomputes dropped tiles)
        now[0] += 1.0
        last = counter.tick()
    assert last["done"] == 4 and last["eta"] == 0.0


def test_rate_counter_can_start_its_clock_at_the_first_tick():
    now, clock = _clock()
    counter = RateCounter("tiles", 3, clock=clock, clock_from_first_tick=True)
    now[0] += 50.0  # a lazy array waits before it is computed: not counted
    counter.tick(10)
    now[0] += 1.0
    ev = counter.tick(10)
    assert ev["eta"] == pytest.approx(0.5) and ev["mpix_per_s"] == pytest.approx(20e-6)


def test_rate_counter_counts_every_tick_from_many_threads():
    counter = RateCounter("tiles", 800)
    threads = [threading.Thread(target=lambda: [counter.tick(2) for _ in range(100)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.done == 800 and counter.pixels == 1600


def test_engine_and_writer_runs_are_the_one_counter():
    from napari_decrappify.engine.graph import Run
    from napari_decrappify.io.chunk_writing import _WriteRun

    seen = []
    run, write = Run(seen.append, None, total=2), _WriteRun(seen.append, None, total=2)
    assert isinstance(run, RateCounter) and isinstance(write, RateCounter)
    assert run.t0 is None and write.t0 is not None  # the engine's clock waits for a tile
    run.tick(4)
    write.tick(4)
    assert [e["event"] for e in seen] == ["tiles", "chunks"]
    assert all(e["done"] == 1 and e["total"] == 2 and e["mpix_per_s"] > 0 for e in seen)


def test_every_cancellation_is_a_cancelled():
    from napari_decrappify import io, tiling
    from napari_decrappify.train import TrainingCancelled

    for exc in (io.RestoreCancelled, tiling.RestoreCancelled, TrainingCancelled):
        assert issubclass(exc, Cancelled)
    assert issubclass(io.RestoreCancelled, RuntimeError)  # scripts catch it as one


def test_training_stops_fastai_with_a_training_cancelled():
    from fastai.callback.core import CancelFitException

    from napari_decrappify.train import TrainingCancelled
    from napari_decrappify.training_callbacks import fit_callbacks

    events_cb, _, _ = fit_callbacks()
    cancel = threading.Event()
    cancel.set()
    cb = events_cb(None, cancel, None, [])
    cb.__dict__.update(training=False, recording=True)  # a validation batch, cancel pressed
    with pytest.raises(TrainingCancelled) as err:
        cb.after_batch()
    assert isinstance(err.value, CancelFitException) and cb.stop_reason == "cancelled"


def test_is_cancellation_goes_by_class_not_name():
    pytest.importorskip("napari")
    from napari_decrappify._napari._workers import is_cancellation
    from napari_decrappify.io import RestoreCancelled
    from napari_decrappify.train import TrainingCancelled

    class FooCancelled(RuntimeError):
        """Another library's cancellation: a failure to report, not the user's cancel."""

    assert is_cancellation(RestoreCancelled("x")) and is_cancellation(TrainingCancelled())
    assert not is_cancellation(FooCancelled("x")) and not is_cancellation(ValueError("x"))
