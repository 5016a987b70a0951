"""The blinded counting study: crops of every source shown shuffled with the source hidden,
clicks per object, saved and resumed as JSON, unblinded against the reference source
(:class:`CountingStudy`), and the agreement of two annotators."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from .matching import _safe_div

STUDY_VERSION = 1


def match_points(a, b, max_distance: float) -> dict[str, Any]:
    """One-to-one matching of two point sets (``(n, 2)``) within ``max_distance`` (Hungarian,
    minimum total distance). ``a`` is scored against ``b``: TP, FP (in ``a`` only), FN (in ``b``
    only), precision, recall, F1 (1.0 when both are empty)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    tp = 0
    if len(a) and len(b):
        d = cdist(a, b)
        cost = np.where(d <= max_distance, d, 1e9)
        rows, cols = linear_sum_assignment(cost)
        tp = int(sum(d[r, c] <= max_distance for r, c in zip(rows, cols, strict=True)))
    fp, fn = len(a) - tp, len(b) - tp
    empty = 1.0 if not len(a) and not len(b) else 0.0
    return {"count": len(a), "reference_count": len(b), "tp": tp, "fp": fp, "fn": fn,
            "precision": _safe_div(tp, len(a), empty), "recall": _safe_div(tp, len(b), empty),
            "f1": _safe_div(2 * tp, len(a) + len(b), empty)}


def _totals(parts: list[dict]) -> dict[str, Any]:
    tp, fp, fn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn"))
    n, ref = tp + fp, tp + fn
    empty = 1.0 if n == 0 and ref == 0 else 0.0
    return {"count": n, "reference_count": ref, "tp": tp, "fp": fp, "fn": fn,
            "precision": _safe_div(tp, n, empty), "recall": _safe_div(tp, ref, empty),
            "f1": _safe_div(2 * tp, n + ref, empty), "fn_rate": _safe_div(fn, ref, 0.0),
            "fp_rate": _safe_div(fp, n, 0.0), "crops": len(parts)}


@dataclass
class CountingStudy:
    """A blinded counting study, as PSSR was validated by human experts.

    The same ``size`` x ``size`` crops (``positions``, top-left corners on the common grid) are
    cut from every source (e.g. LR upsampled bicubically, restored, HR); all crops are
    shuffled (``order``: ``(source index, position index)`` per presented crop) and shown with
    the source hidden; the annotator clicks every object. :meth:`unblind` then scores each
    source's clicks against the ``reference`` source's clicks at the same place (clicks closer
    than ``max_distance`` pixels match one to one). Saved as JSON after every crop, so a study
    can be paused and resumed; two annotators' files compare with :func:`annotator_agreement`.
    """

    sources: list[str]
    reference: str
    size: int
    shape: tuple[int, int]
    positions: list[tuple[int, int]]
    order: list[tuple[int, int]]
    seed: int = 0
    annotator: str = ""
    max_distance: float = 6.0
    clicks: dict[int, list[list[float]]] = dataclass_field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def create(cls, shape: Sequence[int], sources: Sequence[str], reference: str, *,
               n_locations: int = 4, size: int = 128, seed: int = 0, annotator: str = "",
               max_distance: float = 6.0) -> CountingStudy:
        """Choose ``n_locations`` non-overlapping crop positions (seeded) and shuffle the crops."""
        sources = list(sources)
        if len(set(sources)) != len(sources) or not sources:
            raise ValueError(f"sources must be distinct names, got {sources!r}")
        if reference not in sources:
            raise ValueError(f"the reference {reference!r} must be one of the sources {sources}")
        h, w = int(shape[-2]), int(shape[-1])
        size = int(min(size, h, w))
        if size < 8:
            raise ValueError(f"images of {h} x {w} pixels are too small for a counting study")
        cells = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
        if n_locations < 1 or n_locations > len(cells):
            raise ValueError(f"{n_locations} locations of {size} x {size} do not fit in {h} x {w} "
                             f"(at most {len(cells)})")
        rng = np.random.default_rng(seed)
        positions = [cells[i] for i in sorted(rng.choice(len(cells), n_locations, replace=False))]
        pairs = [(s, p) for s in range(len(sources)) for p in range(n_locations)]
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        return cls(sources=sources, reference=reference, size=size, shape=(h, w),
                   positions=positions, order=order, seed=seed, annotator=annotator,
                   max_distance=max_distance)

    # -- progress
    @property
    def n_crops(self) -> int:
        return len(self.order)

    @property
    def n_done(self) -> int:
        return len(self.clicks)

    def next_index(self) -> int | None:
        """The first crop not yet annotated, or None when the study is complete."""
        return next((k for k in range(self.n_crops) if k not in self.clicks), None)

    def crop_box(self, k: int) -> tuple[str, tuple[slice, slice]]:
        """(hidden source name, (y slice, x slice)) of presented crop ``k``."""
        s, p = self.order[k]
        y, x = self.positions[p]
        return self.sources[s], (slice(y, y + self.size), slice(x, x + self.size))

    def crop(self, k: int, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """The pixels of crop ``k`` from ``images`` (name -> 2-D array on the common grid)."""
        name, box = self.crop_box(k)
        if name not in images:
            raise ValueError(f"the study needs an image for every source; {name!r} is missing")
        img = np.asarray(images[name])
        if img.shape[-2:] != tuple(self.shape):
            raise ValueError(f"image {name!r} is {img.shape[-2:]}, the study was made for "
                             f"{tuple(self.shape)}")
        return img[(..., *box)]

    def record(self, k: int, points) -> None:
        """Store the clicks of crop ``k`` (crop pixel coordinates ``(n, 2)``, y then x)."""
        if not 0 <= k < self.n_crops:
            raise ValueError(f"crop {k} does not exist (0..{self.n_crops - 1})")
        pts = np.asarray(points, float).reshape(-1, 2)
        if len(pts) and (pts.min() < -0.5 or pts.max() > self.size - 0.5):
            raise ValueError(f"clicks must lie inside the {self.size} x {self.size} crop")
        self.clicks[k] = pts.round(2).tolist()

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"study_version": STUDY_VERSION, "sources": self.sources, "reference": self.reference,
                "size": self.size, "shape": list(self.shape),
                "positions": [list(p) for p in self.positions],
                "order": [list(o) for o in self.order], "seed": self.seed,
                "annotator": self.annotator, "max_distance": self.max_distance,
                "clicks": {str(k): v for k, v in sorted(self.clicks.items())}}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the study (atomically) as JSON; the clicks so far are kept for resuming."""
        from ..io import write_text_atomic

        path = write_text_atomic(path or self.path or "counting-study.json",
                                 json.dumps(self.to_dict(), indent=1))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CountingStudy:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the counting study {path}: {e}") from e
        if not isinstance(d, dict) or d.get("study_version") != STUDY_VERSION:
            raise ValueError(f"{path} is not a counting study of version {STUDY_VERSION}")
        try:
            study = cls(sources=list(d["sources"]), reference=d["reference"], size=int(d["size"]),
                        shape=tuple(d["shape"]), positions=[tuple(p) for p in d["positions"]],
                        order=[tuple(o) for o in d["order"]], seed=int(d.get("seed", 0)),
                        annotator=d.get("annotator", ""),
                        max_distance=float(d.get("max_distance", 6.0)),
                        clicks={int(k): v for k, v in d.get("clicks", {}).items()}, path=path)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid counting study ({e})") from e
        return study

    # -- results
    def _by_location(self) -> dict[tuple[int, int], list[list[float]]]:
        """(source index, position index) -> clicks, for annotated crops."""
        return {self.order[k]: v for k, v in self.clicks.items()}

    def unblind(self, max_distance: float | None = None) -> dict[str, Any]:
        """Per source: counts, TP, FN (missed), FP against the reference source's clicks at the
        same locations (locations where both were annotated), with precision, recall, F1."""
        md = self.max_distance if max_distance is None else max_distance
        loc = self._by_location()
        r = self.sources.index(self.reference)
        out: dict[str, Any] = {"reference": self.reference, "annotator": self.annotator,
                               "max_distance": md, "complete": self.next_index() is None,
                               "sources": {}}
        for s, name in enumerate(self.sources):
            parts = [match_points(loc[(s, p)], loc[(r, p)], md) for p in range(len(self.positions))
                     if (s, p) in loc and (r, p) in loc]
            out["sources"][name] = _totals(parts)
        return out


def annotator_agreement(a: CountingStudy, b: CountingStudy, max_distance: float | None = None
                        ) -> dict[str, Any]:
    """Agreement of two annotators who did the same study (same crops): per source, annotator
    A's clicks matched against B's (F1 is symmetric), over the crops both annotated."""
    if (a.sources, a.positions, a.size, tuple(a.shape)) != (b.sources, b.positions, b.size,
                                                            tuple(b.shape)):
        raise ValueError("the two studies do not show the same crops (different sources, positions "
                         "or size): create the second one from the first's JSON")
    md = a.max_distance if max_distance is None else max_distance
    la, lb = a._by_location(), b._by_location()
    out: dict[str, Any] = {"annotators": [a.annotator, b.annotator], "max_distance": md,
                           "sources": {}}
    for s, name in enumerate(a.sources):
        parts = [match_points(la[(s, p)], lb[(s, p)], md) for p in range(len(a.positions))
                 if (s, p) in la and (s, p) in lb]
        out["sources"][name] = _totals(parts)
    return out


def new_session(study: CountingStudy, annotator: str, seed: int | None = None) -> CountingStudy:
    """A second annotator's session on the same crops, in a fresh random order."""
    rng = np.random.default_rng(study.seed + 1 if seed is None else seed)
    order = [study.order[i] for i in rng.permutation(study.n_crops)]
    return CountingStudy(sources=list(study.sources), reference=study.reference, size=study.size,
                         shape=tuple(study.shape), positions=list(study.positions), order=order,
                         seed=study.seed, annotator=annotator, max_distance=study.max_distance)
