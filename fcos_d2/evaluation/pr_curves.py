"""Precision-recall curves of a COCO evaluation, drawn into a PNG next to its results."""

import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.evaluation import COCOEvaluator

from .. import compat

__all__ = ["PR_CURVES_FILE", "PRCurveCOCOEvaluator", "plot_pr_curves", "pr_curves_at"]

logger = logging.getLogger(__name__)

#: File name of the picture in the evaluator's output folder, per task ("bbox").
PR_CURVES_FILE = "pr_curves_{task}.png"

#: With more classes than this, per-class curves are drawn thin and left out of the legend.
_MAX_LEGEND_CLASSES = 20


def pr_curves_at(
    precision: np.ndarray, iou_thresholds: Sequence[float], iou: float
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """
    The curves at IoU ``iou`` of COCOeval's (T, R, K, A, M) ``precision`` array (all areas,
    the last max-detections setting): (R, K) precision per class at the R recall
    thresholds, (K,) bool for the classes with ground truth (COCOeval's -1 otherwise), and
    the (R,) mean over those classes (None if there are none), whose mean is COCO's AP at
    that IoU.
    """
    iou_thresholds = np.asarray(iou_thresholds)
    t = np.flatnonzero(np.isclose(iou_thresholds, iou))
    if len(t) == 0:
        raise ValueError(f"IoU {iou} is not among COCOeval's thresholds {iou_thresholds}")
    per_class = precision[t[0], :, :, 0, -1]
    valid = (per_class > -1).all(0)
    mean = per_class[:, valid].mean(1) if valid.any() else None
    return per_class, valid, mean


def plot_pr_curves(
    precision: np.ndarray,
    iou_thresholds: Sequence[float],
    recall_thresholds: Sequence[float],
    class_names: Sequence[str],
    out_file: str,
    *,
    ious: Sequence[float] = (0.5, 0.75),
    title: str = "",
) -> None:
    """
    Draw the precision-recall curves of COCOeval's accumulated ``precision`` array.

    Args:
        precision: (T, R, K, A, M) ``COCOeval.eval["precision"]``: T IoU thresholds, R
            recall thresholds, K classes, A area ranges (0 = all), M max detections (the
            last is used); -1 where a class has no ground truth.
        iou_thresholds: (T,) and recall_thresholds: (R,) of COCOeval's params.
        class_names: K names.
        out_file: PNG to write.
        ious: one panel per IoU threshold (must be among ``iou_thresholds``).

    Each panel has one curve per class (its AP in the legend) and, in black, the mean over
    the classes with ground truth, whose area is the panel's AP.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recall = np.asarray(recall_thresholds)
    fig = Figure(figsize=(6.0 * len(ious), 5.5), dpi=100)
    FigureCanvasAgg(fig)
    many = len(class_names) > _MAX_LEGEND_CLASSES
    for i, iou in enumerate(ious):
        p, valid, mean = pr_curves_at(precision, iou_thresholds, iou)
        ax = fig.add_subplot(1, len(ious), i + 1)
        for k, name in enumerate(class_names):
            if not valid[k]:
                continue
            label = None if many else f"{name} (AP {100 * p[:, k].mean():.1f})"
            ax.plot(
                recall, p[:, k], lw=0.8 if many else 1.3, alpha=0.5 if many else 0.9, label=label
            )
        if mean is not None:
            ax.plot(
                recall,
                mean,
                color="black",
                lw=2.5,
                label=f"all classes (AP {100 * mean.mean():.1f})",
            )
        ax.set_title(f"IoU {iou:g}" + (f", {int(valid.sum())} classes" if many else ""))
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file)


class PRCurveCOCOEvaluator(COCOEvaluator):
    """
    Detectron2's COCOEvaluator that also draws the precision-recall curves (IoU 0.5 and
    0.75, per class and overall, all areas, 100 detections) of each task it evaluates into
    ``<output_dir>/pr_curves_<task>.png``, beside ``coco_instances_results.json``.

    With ``use_fast_impl`` (the default) it evaluates with the fastest COCOeval there is
    (:func:`fcos_d2.compat.fast_cocoeval_class`: Detectron2's C++ one, else
    ``faster_coco_eval``'s), chosen per evaluator; without one, with pycocotools.
    """

    def __init__(self, dataset_name: str, *args, use_fast_impl: bool = True, **kwargs):
        self._fast_cocoeval = compat.fast_cocoeval_class() if use_fast_impl else None
        use_fast = self._fast_cocoeval is not None
        super().__init__(dataset_name, *args, use_fast_impl=use_fast, **kwargs)

    def _eval_predictions(self, *args, **kwargs):
        with compat.cocoeval_fast_path(self._fast_cocoeval if self._use_fast_impl else None):
            return super()._eval_predictions(*args, **kwargs)

    def _derive_coco_results(self, coco_eval, iou_type: str, class_names=None):
        # Called on the main process with the accumulated COCOeval (None: no predictions);
        # the same hook in Detectron2 0.6 and later versions.
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is not None and self._output_dir and "precision" in coco_eval.eval:
            out_file = os.path.join(self._output_dir, PR_CURVES_FILE.format(task=iou_type))
            names = class_names or [str(c) for c in coco_eval.params.catIds]
            plot_pr_curves(
                np.asarray(coco_eval.eval["precision"]),
                coco_eval.params.iouThrs,
                coco_eval.params.recThrs,
                names,
                out_file,
                title=f"{self._metadata.name}: {iou_type} precision-recall",
            )
            logger.info("Precision-recall curves written to %s", out_file)
            self.pr_curves_file: Optional[str] = out_file
        return results
