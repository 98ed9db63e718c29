"""Evaluation extras: precision-recall pictures and per-class score thresholds."""

from .class_thresholds import (
    apply_score_thresholds,
    f1_optimal_thresholds,
    load_class_thresholds,
    save_class_thresholds,
)
from .pr_curves import PR_CURVES_FILE, PRCurveCOCOEvaluator, plot_pr_curves, pr_curves_at

__all__ = [
    "PR_CURVES_FILE",
    "PRCurveCOCOEvaluator",
    "apply_score_thresholds",
    "f1_optimal_thresholds",
    "load_class_thresholds",
    "plot_pr_curves",
    "pr_curves_at",
    "save_class_thresholds",
]
