"""Convert the formats users hold (Pascal VOC xml, YOLO txt and Ultralytics datasets, per-image
txt, COCO) into versions."""

from qm_dagster.importers.convert import ImportSpec, import_version
from qm_dagster.importers.ultralytics import import_ultralytics

__all__ = ["ImportSpec", "import_ultralytics", "import_version"]
