"""The evaluator of a dataset, chosen by its ``evaluator_type`` as Detectron2's train_net does."""

import logging
import os
from typing import Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import DatasetEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from .. import compat
from ..errors import InputError
from ..evaluation import PRCurveCOCOEvaluator

__all__ = ["EVALUATOR_TYPES", "build_evaluator"]

logger = logging.getLogger(__name__)

#: Dataset ``evaluator_type`` values with an evaluator for boxes.
EVALUATOR_TYPES = ("coco", "lvis", "pascal_voc")


def _convert_to_coco(dataset_name: str, output_folder: str) -> None:
    """
    Give a dataset without a ``json_file`` (one not registered from a COCO json, e.g. a YOLO
    folder) a COCO json converted from its dicts now, once per process. Detectron2's
    COCOEvaluator would convert it too, but reuses an earlier
    ``<output_folder>/<name>_coco_format.json`` even when the dataset has changed since.
    """
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("json_file"):
        return
    path = os.path.join(output_folder, f"{dataset_name}_coco_format.json")
    if comm.is_main_process():
        convert_to_coco_json(dataset_name, path, allow_cached=False)
    comm.synchronize()
    metadata.json_file = path


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """
    The evaluator of ``dataset_name`` from ``MetadataCatalog.get(dataset_name).evaluator_type``:

    - "coco": COCOEvaluator with the fastest COCOeval there is (chosen per evaluator, see
      compat.fast_cocoeval_class), which also draws precision-recall curves into
      ``output_folder`` (PRCurveCOCOEvaluator);
    - "lvis": Detectron2's LVISEvaluator (needs the ``lvis`` package);
    - "pascal_voc": Detectron2's PascalVOCDetectionEvaluator (metadata "dirname", "split"
      and "year", as ``register_pascal_voc`` sets them; prints VOC AP, AP50, AP75);
    - none set: COCOEvaluator, which converts the dataset dicts to COCO format.

    A "coco" dataset without a ``json_file`` is converted to COCO json afresh (not from a
    cached conversion of an earlier run) into ``output_folder``.

    Any other type raises InputError naming the dataset and its type.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type is None:
        logger.info("Dataset '%s' has no evaluator_type: evaluating it as COCO", dataset_name)
        evaluator_type = "coco"
    if evaluator_type == "coco":
        _convert_to_coco(dataset_name, output_folder)
        return PRCurveCOCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "lvis":
        compat.import_lvis()
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise InputError(
        f"no evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}': "
        f"FCOS detects boxes, evaluated for the types {', '.join(EVALUATOR_TYPES)}. Set "
        f"MetadataCatalog.get('{dataset_name}').evaluator_type, or pass evaluators to "
        "Trainer.test"
    )
