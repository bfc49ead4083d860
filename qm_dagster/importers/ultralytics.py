"""Import an Ultralytics YOLO dataset as it ships: its dataset YAML (``path``, ``train``,
``val``, ``test``, ``names`` as a list or ``{id: name}``), one version per split.

Each split's images are a folder (or a list of folders) under ``path``; their labels are where
Ultralytics looks for them, the same path with its last ``images`` folder named ``labels``.
Boxes (``class cx cy w h``) and YOLO-seg polygons (``class x1 y1 x2 y2 ...``) alike, relative
to the image. The val and test versions reference the train version (drift against it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from qm_dagster.dataset import Version
from qm_dagster.errors import DatasetError, QmError
from qm_dagster.importers.convert import ImportSpec, import_version
from qm_dagster.importers.readers import yaml_names

SPLITS = {"train": "train", "val": "validation", "test": "validation"}  # split -> version kind


def read_dataset_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise QmError(f"dataset YAML {path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise DatasetError(path, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "", "expected a mapping (path, train, val, test, names)")
    return data


def labels_folder(images: Path) -> Path:
    """Ultralytics' label folder of an image folder: its last ``images`` part as ``labels``."""
    parts = list(images.parts)
    if "images" not in parts:
        raise QmError(f"{images}: no 'images' folder in the path, so no 'labels' beside it")
    last = len(parts) - 1 - parts[::-1].index("images")
    parts[last] = "labels"
    return Path(*parts)


def split_folders(data: dict, yaml_path: str) -> dict[str, Path]:
    """``{split: images folder}`` of the splits the YAML names (``path`` relative to the YAML's
    folder, the split folders relative to ``path``)."""
    root = Path(yaml_path).parent
    base = Path(data.get("path") or root)
    base = base if base.is_absolute() else root / base
    out = {}
    for split in SPLITS:
        value = data.get(split)
        if not value:
            continue
        if not isinstance(value, str):
            raise DatasetError(
                yaml_path, split, "expected one images folder (lists and .txt lists: not yet)"
            )
        folder = base / value
        if not folder.is_dir():
            raise DatasetError(yaml_path, split, f"images folder {folder} does not exist")
        out[split] = folder
    if not out:
        raise DatasetError(yaml_path, "", "names no split: expected train, val or test")
    return out


def import_ultralytics(
    yaml_path: str, root: str, name: str, strict: bool = False, overwrite: bool = False
) -> list[Version]:
    """Each split of the dataset as version ``<name>-<split>`` (val and test referencing
    ``<name>-train`` when there is one)."""
    data = read_dataset_yaml(yaml_path)
    yaml_names(data, yaml_path)  # checked before any version is written
    folders = split_folders(data, yaml_path)
    train = f"{name}-train" if "train" in folders else None
    versions = []
    for split, images in folders.items():
        spec = ImportSpec(
            images=str(images),
            format="yolo",
            labels=str(labels_folder(images)),
            names=yaml_path,  # its ``names``
            strict=strict,
        )
        versions.append(
            import_version(
                spec,
                root,
                f"{name}-{split}",
                kind=SPLITS[split],
                reference=None if split == "train" else train,
                description=f"{Path(yaml_path).name}: {split}",
                overwrite=overwrite,
            )
        )
    return versions
