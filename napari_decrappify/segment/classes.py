"""Class names and the label convention: which names are valid (:func:`check_classes`),
which label values are objects rather than background (:func:`object_class_ids`,
:data:`BACKGROUND_NAMES`) and the name of a label value (:func:`class_name`)."""

from __future__ import annotations

from collections.abc import Sequence

BACKGROUND_NAMES = frozenset({"background", "bg", "backgr", "other", "none", "unlabelled",
                              "unlabeled", "cytoplasm"})


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class names for labels ``1..K``: non-empty, unique strings."""
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    classes = [str(c).strip() for c in classes]
    if not classes:
        raise ValueError("give at least one class name (label 1 = first name)")
    if any(not c for c in classes):
        raise ValueError(f"class names must not be empty: {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique: {classes!r}")
    return classes


def object_class_ids(classes: Sequence[str] | None, present: Sequence[int] | None = None) -> list[int]:
    """Label values that are objects: every class ``1..K`` except background-like names.

    Without names, every non-zero value in ``present``.
    """
    if classes:
        return [k for k, name in enumerate(classes, start=1)
                if name.strip().lower() not in BACKGROUND_NAMES]
    return sorted(int(v) for v in (present or []) if int(v) != 0)


def class_name(classes: Sequence[str] | None, k: int) -> str:
    if classes and 1 <= k <= len(classes):
        return classes[k - 1]
    return "object" if k else "none"
