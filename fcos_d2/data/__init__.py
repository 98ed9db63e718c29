"""Datasets of fcos_d2."""

from .builtin import (
    SYNTH_CLASSES,
    SynthObject,
    default_cache_dir,
    ensure_builtin_dataset,
    generate_synthetic_coco,
    register_builtin_datasets,
    render_synthetic_image,
    synth_dataset_stats,
)

__all__ = [
    "SYNTH_CLASSES",
    "SynthObject",
    "default_cache_dir",
    "ensure_builtin_dataset",
    "generate_synthetic_coco",
    "register_builtin_datasets",
    "render_synthetic_image",
    "synth_dataset_stats",
]
