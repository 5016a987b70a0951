"""Small Qt / magicgui helpers shared by the docks: scrollable dock body, collapsible sections,
layer choices, a matplotlib canvas themed like the viewer."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from magicgui.widgets import Container
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

#: how a training dock words a run's ``stop_reason``
STOP_TEXT = {
    "completed": "finished",
    "budget": "time budget reached",
    "cancelled": "cancelled: best weights kept",
    "diverged": "diverged (learning rate too high?): best weights kept",
}


class DockBody(QWidget):
    """A dock's widget: a vertical, scrollable stack of magicgui containers and Qt sections.

    ``reset_choices`` (called by napari when layers change) is forwarded to every magicgui
    container added with :meth:`add`.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        # the dock's width is the user's: long model names or messages wrap or elide instead
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        self._layout = QVBoxLayout(inner)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self._scroll.setWidget(inner)
        outer.addWidget(self._scroll)
        self._containers: list[Container] = []

    def add(self, container: Container, title: str | None = None, collapsed: bool = True):
        """Add a magicgui container, optionally inside a collapsible section titled ``title``."""
        self._containers.append(container)
        _fit_width(container.native)
        if title is None:
            self._layout.addWidget(container.native)
            return None
        section = QCollapsible(title)
        section.addWidget(container.native)
        if not collapsed:
            section.expand(animate=False)
        self._layout.addWidget(section)
        return section

    def finish(self) -> None:
        self._layout.addStretch(1)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """As wide as the content's own minimum plus the vertical scroll bar: the horizontal
        bar is off, so a dock made narrower than that would cut its right edge (combo boxes,
        buttons and checkboxes ran 2-7 px under the scroll bar at 1600 x 1000)."""
        hint = super().minimumSizeHint()
        inner = self._scroll.widget()
        if inner is None:
            return hint
        width = (inner.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width()
                 + 2 * self._scroll.frameWidth())
        return QSize(max(hint.width(), width), hint.height())

    def reset_choices(self, *_args) -> None:
        for c in self._containers:
            c.reset_choices()

    def follow_layers(self, viewer) -> None:
        """Refresh every layer choice when the viewer's layers are added, removed or renamed."""
        for ev in ("inserted", "removed", "reordered", "renamed"):
            getattr(viewer.layers.events, ev).connect(self.reset_choices)


class DefaultChoice:
    """A layer combo box that follows a default until the user picks a layer there.

    ``pick(layers)`` chooses among the combo box's layers (e.g. :func:`._layers.lr_looking`);
    :meth:`apply` (after the choices are refreshed) moves the value to it, unless the user's own
    pick is still the value and still in the viewer: layers added later then leave the user's
    choice alone, and a removed pick falls back to the default. Values set by the dock itself,
    inside :meth:`quiet`, are not taken for the user's.

    Parameters
    ----------
    combo : magicgui.widgets.ComboBox
        The layer choice.
    pick : callable
        ``pick(layers) -> layer or None``: the default among the offered layers.
    viewer : napari.Viewer
        Whose layers a pick must still be in.
    """

    def __init__(self, combo, pick: Callable, viewer):
        self.combo, self.pick, self.viewer = combo, pick, viewer
        self._picked = lambda: None  # the layer the user picked (weakly held)
        self._setting = False
        combo.changed.connect(self._changed)

    @contextmanager
    def quiet(self):
        """Values set in here are the dock's, not the user's pick."""
        was, self._setting = self._setting, True
        try:
            yield
        finally:
            self._setting = was

    def apply(self) -> None:
        """Point the combo box at the default, unless the user's pick is still its value."""
        current, picked = self.combo.value, self._picked()
        if picked is not None and picked is current and picked in self.viewer.layers:
            return
        self._picked = lambda: None
        default = self.pick([c for c in self.combo.choices if c is not None])
        if default is None or default is current:
            return
        with self.quiet():
            self.combo.value = default

    def _changed(self, *_args) -> None:
        if not self._setting and self.combo.value is not None:
            self._picked = weakref.ref(self.combo.value)


def note(text: str = ""):
    """A magicgui Label that wraps its text (messages, tables, explanations)."""
    from magicgui.widgets import Label

    label = Label(value=text)
    label.native.setWordWrap(True)
    return label


def _fit_width(widget: QWidget) -> None:
    """Let combo boxes shrink (their whole text in a tooltip) and labels wrap, so that a narrow
    dock shows everything."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
        if not combo.toolTip():  # a narrow combo box cuts its text: the whole of it on hover
            combo.setToolTip(combo.currentText())
            combo.currentTextChanged.connect(combo.setToolTip)
    for label in widget.findChildren(QLabel):
        if label.wordWrap():
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.MinimumExpanding)


def layer_choices(viewer, kind=None, optional: bool = False):
    """A magicgui ``choices`` callable listing the viewer's layers (of type ``kind``)."""

    def choices(_widget=None):
        from napari.layers import Image

        k = kind or Image
        items = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, k)]
        return ([("(none)", None)] if optional else []) + items

    return choices


def budget_widgets(minutes: float):
    """A training dock's budget: ``(unit, amount)``, a "budget in" minutes / epochs combo box
    and the amount (``minutes`` by default); :func:`budget` reads them."""
    from magicgui.widgets import ComboBox, FloatSpinBox

    return (ComboBox(label="budget in", choices=["minutes", "epochs"], value="minutes"),
            FloatSpinBox(label="budget", value=minutes, min=0.01, max=100_000, step=1.0))


def budget(unit, amount) -> tuple[float | None, int | None]:
    """``(minutes, epochs)`` of the budget widgets of :func:`budget_widgets`: the one chosen is
    set (epochs: a whole number, at least one), the other is None."""
    if unit.value == "minutes":
        return float(amount.value), None
    return None, max(1, int(round(amount.value)))


def model_folder(folder, name: str, *, replace: bool = True) -> Path:
    """Where a training dock saves a model: ``folder / name`` (``~`` expanded).

    Raises
    ------
    ValueError
        ``name`` is not a folder name; or, unless ``replace``, the folder exists.
    """
    name = name.strip()
    if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
        raise ValueError(f"model name {name!r} is not a valid folder name")
    out = Path(folder).expanduser() / name
    if out.exists() and not replace:
        raise ValueError(f"model folder {out} exists: choose another name or tick "
                         "'replace an existing model'")
    return out


def devices() -> list[str]:
    """Device choices: auto, cpu and each CUDA device."""
    import torch

    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
