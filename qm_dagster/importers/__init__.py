"""Convert the formats users hold (Pascal VOC xml, YOLO txt, per-image txt, COCO) into a version."""

from qm_dagster.importers.convert import ImportSpec, import_version

__all__ = ["ImportSpec", "import_version"]
