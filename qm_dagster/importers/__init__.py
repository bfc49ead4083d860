"""Convert the formats users hold (Pascal VOC xml, YOLO txt and Ultralytics datasets, per-image
txt, COCO, classification folders) into versions."""

from qm_dagster.importers.classes import import_classification
from qm_dagster.importers.convert import ImportSpec, import_version
from qm_dagster.importers.ultralytics import import_ultralytics

__all__ = ["ImportSpec", "import_classification", "import_ultralytics", "import_version"]
