"""Train dock end to end: a tiny model trains for a few iterations in a worker, the live plot
fills, the model is saved and shows up in the Restore dock's model list; cancel keeps weights."""

import pytest

pytestmark = pytest.mark.gui


def _quick(widget, name, *, epochs=2, iterations=3):
    widget.scale.value = 2
    widget.encoder.value = "tiny"
    widget.loss.value = "l1"
    widget.budget_unit.value = "epochs"
    widget.budget.value = epochs
    widget.patch_size.value = 32
    widget.batch_size.value = 2
    widget.iterations.value = iterations
    widget.device.value = "cpu"
    widget.model_name.value = name


def test_train_dock_trains_saves_and_restore_dock_lists_it(make_napari_viewer, qtbot, model_dir,
                                                          em_stack):
    from napari_decrappify._napari.restore import RestoreWidget
    from napari_decrappify._napari.train import TrainWidget
    from napari_decrappify.models import load_model

    viewer = make_napari_viewer()
    hr = viewer.add_image(em_stack, name="hr")
    restore = RestoreWidget(viewer)
    dock = TrainWidget(viewer)
    assert dock.folder.value == model_dir  # default: the first user model folder
    assert "dock-model" not in [m["name"] for m in restore.model_entries()]

    dock.hr_layers.value = [hr]
    _quick(dock, "dock-model")
    job = dock.start()
    assert job is not None
    assert not dock.train_button.enabled and dock.cancel_button.enabled
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)

    assert job.status == "done", dock.status.value
    assert dock.result.stop_reason == "completed"
    assert (model_dir / "dock-model" / "model.json").exists()
    model = load_model(model_dir / "dock-model")
    assert model.scale == 2 and model.config.arch.encoder == "tiny"
    # the live plot got one loss point per iteration and one validation point per epoch
    assert dock.plot.iterations == list(range(1, 7))
    assert len(dock.plot.valid_psnr) == 2
    assert dock.plot.valid_psnr[-1] == pytest.approx(dock.result.history[-1]["batch_psnr"])
    assert "saved" in dock.status.value
    # the Restore dock heard about the new model and lists it
    assert "dock-model" in [m["name"] for m in restore.model_entries()]
    assert restore.model.value == str(model_dir / "dock-model")
    # the worker's `finished` signal re-enables the buttons just after `running` turns False
    qtbot.waitUntil(lambda: dock.train_button.enabled, timeout=10_000)
    assert not dock.cancel_button.enabled


def test_train_dock_cancel_keeps_weights(make_napari_viewer, qtbot, model_dir, em_stack):
    from napari_decrappify._napari.train import TrainWidget

    viewer = make_napari_viewer()
    hr = viewer.add_image(em_stack, name="hr")
    dock = TrainWidget(viewer)
    dock.hr_layers.value = [hr]
    _quick(dock, "cancelled-model", epochs=50, iterations=5)
    job = dock.start()
    qtbot.waitUntil(lambda: len(dock.plot.iterations) >= 2, timeout=60_000)
    dock.cancel()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert dock.result.stop_reason == "cancelled"
    assert len(dock.plot.iterations) < 50 * 5
    assert (model_dir / "cancelled-model" / "model.safetensors").exists()
    assert "cancelled" in dock.status.value


def test_train_dock_refuses_bad_input(make_napari_viewer, model_dir, em_stack):
    from napari_decrappify._napari.train import TrainWidget

    viewer = make_napari_viewer()
    hr = viewer.add_image(em_stack, name="hr")
    dock = TrainWidget(viewer)
    assert dock.start() is None
    assert "at least one HR layer" in dock.status.value
    dock.hr_layers.value = [hr]
    dock.model_name.value = "../escape"
    assert dock.start() is None
    assert "not a valid folder name" in dock.status.value
    (model_dir / "taken").mkdir()
    dock.model_name.value = "taken"
    assert dock.start() is None
    assert "exists" in dock.status.value


def test_train_dock_defaults_are_the_core_recipe(make_napari_viewer, model_dir):
    """Untouched, the dock trains what `decrappify train` trains with no options (the measured
    default recipe: L1, leaky decoder, lr 3e-3); the activation choice reaches the config."""
    from napari_decrappify._napari.train import TrainWidget
    from napari_decrappify.config import ArchConfig, TrainConfig

    dock = TrainWidget(make_napari_viewer())
    cfg = dock.config()
    core = TrainConfig(scale=cfg.scale, arch=ArchConfig(scale=cfg.scale), minutes=10.0)
    for field in ("loss", "lr_max", "patch_size", "batch_size", "iterations_per_epoch"):
        assert getattr(cfg, field) == getattr(core, field), field
    assert cfg.loss == "l1" and cfg.arch.activation == "leaky_relu"
    dock.activation.value = "relu"
    assert dock.config().arch.activation == "relu"


def test_train_dock_fine_tunes_a_trained_model(make_napari_viewer, qtbot, model_dir, tiny2x,
                                               em_stack):
    """'start from' lists the restoration models; choosing one shows and locks its scale,
    encoder and frames, and the run starts from its weights (recorded in the new model)."""
    from napari_decrappify._napari.train import TrainWidget
    from napari_decrappify.models import load_model

    viewer = make_napari_viewer()
    hr = viewer.add_image(em_stack, name="hr", scale=(40, 8, 8), units="nm")
    dock = TrainWidget(viewer)
    combo = dock.start_from.native
    labels = {combo.itemData(i): combo.itemText(i) for i in range(combo.count())}
    assert dock.start_from.value is None and labels[None] == "new network"
    tuned_from = str(model_dir / "tiny-2x")
    assert "fine-tune tiny-2x" in labels[tuned_from]

    dock.scale.value, dock.encoder.value = 4, "resnet18s"
    dock.hr_layers.value = [hr]
    _quick(dock, "tuned")
    dock.scale.value = 4  # _quick sets 2; the model's scale must win again below
    dock.start_from.value = tuned_from
    assert dock.scale.value == 2 and dock.encoder.value == "tiny" and dock.frames.value == 1
    assert not dock.scale.enabled and not dock.encoder.enabled
    assert dock.lr_max.value == pytest.approx(1e-3)  # the fine-tune schedule
    assert dock.loss.value == "mse"  # ... and the fine-tune loss
    job = dock.start()
    assert "fine-tuning tiny-2x" in dock.status.value
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.status == "done", dock.status.value
    tuned = load_model(model_dir / "tuned").config
    record = tuned.training
    assert record["resumed_from"][-1]["weights_from"] == tuned_from
    assert record["config"]["pct_start"] == 0.05 and record["config"]["lr_max"] == pytest.approx(1e-3)
    assert record["config"]["loss"] == "mse"
    assert tuned.pixel_size_nm == [8.0, 8.0]  # from the HR layer's scale and units
    # the new model is offered for the next fine-tuning; "new network" unlocks the choices
    qtbot.waitUntil(lambda: str(model_dir / "tuned") in dock.start_from.choices, timeout=10_000)
    dock.start_from.value = None
    assert dock.scale.enabled and dock.encoder.enabled
    assert dock.lr_max.value == pytest.approx(3e-3) and dock.loss.value == "l1"


@pytest.mark.parametrize("width", [240, 420])
def test_training_plot_tick_labels_are_not_clipped(make_napari_viewer, width):
    """The plot's margins fit its widest tick labels, also in a narrow dock with large loss
    values; the data lie within the axes (ticks cover them); drawing it is quick."""
    import time

    from qtpy.QtCore import QRectF
    from qtpy.QtGui import QFontMetrics

    from napari_decrappify._napari._plot import LossPlot, nice_ticks, tick_text

    plot = LossPlot(make_napari_viewer())
    for i in range(1, 2001):
        plot.add({"event": "batch", "iteration": i, "loss": 12345.0 / i})
        if i % 500 == 0:
            plot.add({"event": "epoch", "batch_psnr": 20 + i / 333, "valid_loss": 1.0})
    plot.canvas.resize(width, 220)
    fm = QFontMetrics(plot.canvas.font())
    area, xt, yt, pt = plot.layout(QRectF(plot.canvas.rect()), fm)
    assert area.left() - max(fm.horizontalAdvance(tick_text(v)) for v in yt) - 5 >= 0
    assert area.right() + 5 + max(fm.horizontalAdvance(tick_text(v)) for v in pt) <= width
    assert area.bottom() + 2 * fm.height() <= 220
    assert yt[0] <= min(plot.losses) and yt[-1] >= max(plot.losses)
    assert pt[0] <= min(plot.valid_psnr) and pt[-1] >= max(plot.valid_psnr)
    t0 = time.perf_counter()
    image = plot.canvas.grab().toImage()
    assert time.perf_counter() - t0 < 0.05  # a paint, not a 0.2 s matplotlib redraw
    assert plot.paints >= 1 and image.width() == width
    assert nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_train_dock_keeps_its_form_visible_with_three_docks_open(make_napari_viewer, qtbot,
                                                                 model_dir):
    """With Restore, Train and Segment docked at 1600 x 1000, napari squeezed the Train dock to
    one visible row: its form keeps a minimum height (the rest scrolls), and its progress line
    (status, bar, Cancel) stays below it."""
    from napari_decrappify._napari.restore import RestoreWidget
    from napari_decrappify._napari.segment import SegmentWidget
    from napari_decrappify._napari.train import MIN_FORM_HEIGHT, TrainWidget

    viewer = make_napari_viewer(show=True)
    window = viewer.window
    window._qt_window.resize(1600, 1000)
    docks = {}
    for name, cls in (("Restore", RestoreWidget), ("Train", TrainWidget),
                      ("Segment", SegmentWidget)):
        docks[name] = cls(viewer)
        window.add_dock_widget(docks[name], name=name, area="right")
    qtbot.wait(200)
    train = docks["Train"]
    assert train._scroll.viewport().height() >= MIN_FORM_HEIGHT - 10
    assert train.progress.geometry().bottom() <= train.height()
    assert train.cancel_button.native.isVisibleTo(train)
