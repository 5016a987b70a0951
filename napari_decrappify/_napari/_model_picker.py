"""The model choice of a dock: one combo box that lists the models of the kind the dock needs.

Every dock that picks a model (Restore, Segment, Train's "start from") uses
:class:`ModelPicker`: the bundled and user models of its kind (:func:`models.list_models`),
then folders chosen by hand or saved outside the listed folders, each offered once (by its
resolved path, so ``~/m``, ``./m`` and a link to it are one entry). A folder whose model is of
another kind is refused with a message that says so, and never listed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


class ModelPicker(ComboBox):
    """A combo box of the models of one ``kind``; its values are model folder paths (str).

    Parameters
    ----------
    kind : str
        The model kind offered: ``"restoration"`` or ``"segmentation"``.
    text : callable, optional
        ``text(entry) -> str``: how an entry (a :func:`models.list_models` dict) reads in the
        list; default its name.
    none : str, optional
        A first item whose value is ``None`` (e.g. ``"new network"``).
    empty : str
        The one item (value ``None``) when there is no model and no ``none`` item.
    entries : callable, optional
        ``entries() -> list[dict]``: what the list offers, called at each refresh; default
        :meth:`entries` (see also :meth:`list_with`).
    **kwargs
        Passed to :class:`magicgui.widgets.ComboBox` (label, tooltip, value ...).
    """

    def __init__(self, kind: str, *, text: Callable[[dict], str] | None = None,
                 none: str | None = None, empty: str = "(no model)",
                 entries: Callable[[], list[dict]] | None = None, **kwargs):
        self.kind = kind
        self.folders: list[str] = []  # chosen by hand or saved elsewhere: one per resolved path
        self._text = text or (lambda m: m["name"])
        self._none, self._empty = none, empty
        self._entries: Callable[[], list[dict]] = entries or self.entries
        super().__init__(choices=self._choices, **kwargs)

    def list_with(self, entries: Callable[[], list[dict]]) -> None:
        """List ``entries()`` from now on (a dock's own method, which may call
        :meth:`entries` through the dock's attribute holding this picker)."""
        self._entries = entries
        self.reset_choices()

    # ------------------------------------------------------------------ the list
    def entries(self) -> list[dict]:
        """The models of this kind: bundled and user ones, then the added folders that are
        not among them (compared by resolved path) and still hold a model of this kind."""
        from ..models import list_models, read_model_config

        out = [m for m in list_models() if m["kind"] == self.kind]
        known = {_resolved(m["path"]) for m in out}
        for folder in self.folders:
            if _resolved(folder) in known:
                continue
            try:
                cfg = read_model_config(Path(folder))
            except ValueError:  # removed or damaged since it was added
                continue
            if cfg.kind != self.kind:
                continue
            known.add(_resolved(folder))
            out.append({"name": Path(folder).name, "kind": cfg.kind, "scale": cfg.arch.scale,
                        "frames": cfg.arch.frames, "encoder": cfg.arch.encoder, "path": folder,
                        "bundled": False, "metrics": cfg.metrics})
        return out

    def _choices(self, _widget=None) -> list[tuple[str, str | None]]:
        items = [(self._text(m), str(m["path"])) for m in self._entries()]
        if self._none is not None:
            return [(self._none, None)] + items
        return items or [(self._empty, None)]

    def listed(self, path) -> str | None:
        """The value in the list that is the folder ``path`` (by resolved path), or None."""
        target = _resolved(path)
        return next((v for v in self.choices if v and _resolved(v) == target), None)

    # ------------------------------------------------------------------ adding folders
    def check(self, folder) -> str:
        """``folder`` (user's ``~`` expanded) if it holds a model of this kind.

        Raises
        ------
        ValueError
            Not a readable model folder, or a model of another kind (the message says which).
        """
        from ..models import read_model_config

        folder = str(Path(folder).expanduser())
        cfg = read_model_config(Path(folder))  # a clear error for a folder that is no model
        if cfg.kind != self.kind:
            raise ValueError(f"{folder} holds a {cfg.kind} model, not a {self.kind} model")
        return folder

    def add_folder(self, folder) -> str | None:
        """Offer the model in ``folder`` (once, whatever the spelling of its path) and select
        it; returns the value selected. Raises a ValueError as :meth:`check`."""
        folder = self.check(folder)
        resolved = _resolved(folder)
        if not any(_resolved(f) == resolved for f in self.folders):
            self.folders.append(folder)
        self.reset_choices()
        value = self.listed(folder)
        if value is not None:
            self.value = value
        return value

    def offer_saved(self, path) -> bool:
        """A model folder was written (a training dock): offer and select it when it holds a
        model of this kind, also when it was saved outside the listed folders; True then.
        Otherwise (another kind, not a model folder) only refresh the list."""
        try:
            self.add_folder(path)
        except ValueError:
            self.reset_choices()
            return False
        return True
