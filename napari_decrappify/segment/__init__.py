"""Segmentation: semantic training from sparse painted labels, prediction through the tiled
engine, instance split, measurements, object matching and count comparison.

Label convention (the same numbers in the painted Labels layer, in the model and in its output)
    ``0`` is *unlabelled* in training labels: the loss ignores those pixels. ``1..K`` are the
    named classes (``classes[k - 1]`` names label ``k``; paint the background as a class of its
    own, e.g. ``classes=["background", "mitochondria"]``). The network has ``K + 1`` outputs so
    that output channel ``k`` is label ``k``; channel 0 is never a training target (its
    probability goes to ~0) and marks "no prediction" (the engine's skipped empty tiles).
    Classes named like background (:data:`BACKGROUND_NAMES`) are not split into objects.

Pipeline::

    result = train_segmenter([image], [painted], ["background", "nucleus"], SegmentConfig(minutes=2))
    seg = predict(result.model, image)              # seg.probabilities (K+1, ...), seg.labels
    objects = instances(seg.labels, "watershed", classes=seg.classes)
    table = measure(objects, image, seg.classes, pixel_size=(0.1, 0.1), semantic=seg.labels)
    table.to_csv("objects.csv")
    stats = match(objects, ground_truth_instances, iou=0.5)   # TP/FP/FN, precision, recall, F1

One module per concern; every name is imported from here (``from napari_decrappify.segment
import predict``):

* :mod:`.segment_config`: :func:`segmentation_arch`, :class:`SegmentConfig` (not
  :mod:`napari_decrappify.config`, the library's own settings, which it builds on)
* :mod:`.classes`: class names and which labels are objects
* :mod:`.loss`: :class:`SparseSegLoss` and the validation metrics
* :mod:`.training_data`: checks of the training data, :class:`LabelledPatches`
* :mod:`.training`: :func:`train_segmenter`
* :mod:`.prediction`: :func:`predict`, :func:`segment`, :class:`Segmentation`
* :mod:`.splitting`: :func:`instances`, :func:`object_classes`
* :mod:`.measurements`: :func:`measure`, :class:`Measurements`, :func:`write_csv`
* :mod:`.matching`: :func:`match`
* :mod:`.counts`: :func:`compare_counts`, :func:`segment_objects`
* :mod:`.study`: :class:`CountingStudy`, :func:`annotator_agreement`, :func:`new_session`
"""

from __future__ import annotations

# ``name as name``: names the single module ``segment.py`` held outside ``__all__``, still
# importable from here
from .classes import BACKGROUND_NAMES, check_classes, object_class_ids
from .classes import class_name as class_name
from .counts import compare_counts, segment_objects
from .loss import SparseSegLoss
from .loss import seg_accuracy as seg_accuracy
from .loss import seg_dice as seg_dice
from .loss import soft_dice_loss as soft_dice_loss
from .matching import match
from .measurements import Measurements, measure, write_csv
from .prediction import Segmentation, predict, segment
from .segment_config import ProgressFn as ProgressFn
from .segment_config import SegmentConfig, segmentation_arch
from .splitting import instances, object_classes
from .study import STUDY_VERSION as STUDY_VERSION
from .study import CountingStudy, annotator_agreement, match_points, new_session
from .training import train_segmenter
from .training_data import MAX_COORDS_PER_CLASS as MAX_COORDS_PER_CLASS
from .training_data import LabelledPatches as LabelledPatches

__all__ = [
    "BACKGROUND_NAMES", "CountingStudy", "Measurements", "annotator_agreement", "match_points",
    "new_session", "SegmentConfig", "Segmentation", "SparseSegLoss",
    "check_classes", "compare_counts", "instances", "match", "measure", "object_class_ids",
    "segmentation_arch",
    "object_classes", "predict", "segment", "segment_objects", "train_segmenter", "write_csv",
]
