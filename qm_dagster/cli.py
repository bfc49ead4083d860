"""``qm``: the command line. Engine commands need no Dagster; ``materialize`` drives Dagster."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
from pathlib import Path

from qm_dagster import storage
from qm_dagster.config import Settings
from qm_dagster.errors import QmError
from qm_dagster.passes.pool import start_fork_server


def _add_version_meta(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["train", "validation", "production"])
    p.add_argument("--reference", help="reference version for drift")
    p.add_argument("--description")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")


def _version_meta(args: argparse.Namespace) -> dict[str, object]:
    return {
        "kind": args.kind,
        "reference": args.reference,
        "description": args.description,
        "overwrite": args.overwrite,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    p = sub.add_parser("demo", parents=[common], help="write the demo dataset versions")
    p.add_argument("--to", help="dataset root (default: QM_DATASETS)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "import",
        parents=[common],
        help="convert VOC / YOLO / Ultralytics / txt / COCO files into a version",
    )
    p.add_argument(
        "version", help="name of the new version (ultralytics: prefix, one version a split)"
    )
    p.add_argument("--images", help="folder of image files (all formats but ultralytics)")
    p.add_argument(
        "--format",
        default="none",
        choices=[
            "voc",
            "yolo",
            "ultralytics",
            "cvat",
            "labelstudio",
            "fiftyone",
            "txt-xyxy",
            "txt-xywh",
            "coco",
            "classification",
            "none",
        ],
        help="ground-truth format (classification: one sub-folder per class, or --labels)",
    )
    p.add_argument(
        "--labels",
        help="labels folder (voc/yolo/txt), instances JSON (coco), dataset YAML (ultralytics), "
        "annotations XML (cvat: CVAT for images 1.1), JSON export (labelstudio), labels.json "
        "(fiftyone: FiftyOneImageDetectionDataset) or a CSV/JSON of file_name,label "
        "(classification)",
    )
    p.add_argument(
        "--names",
        help="class names: a file with one a line (line i = class id i) or a YAML with names",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first unreadable line or file instead of leaving it out and reporting",
    )
    p.add_argument(
        "--predictions",
        help="detections folder (txt/yolo), results JSON (coco) or class probabilities "
        "(classification: CSV/Parquet of file_name and a column per class, or JSON)",
    )
    p.add_argument("--pred-format", choices=["txt-xyxy", "txt-xywh", "yolo", "fiftyone", "coco"])
    p.add_argument("--pred-names", help="class names file of the detections (default --names)")
    p.add_argument("--model", default="model", help="model name of the predictions")
    p.add_argument("--to", help="dataset root (default: QM_DATASETS)")
    _add_version_meta(p)

    p = sub.add_parser(
        "register", parents=[common], help="copy a folder in the version layout in as a version"
    )
    p.add_argument("folder")
    p.add_argument("version")
    p.add_argument("--to", help="dataset root (default: QM_DATASETS)")
    _add_version_meta(p)

    sub.add_parser("versions", parents=[common], help="list the versions under the dataset root")

    p = sub.add_parser(
        "materialize", parents=[common], help="materialize assets of a version through Dagster"
    )
    p.add_argument("version")
    p.add_argument(
        "--select",
        default="*",
        help="asset key pattern, e.g. 'data/*' or 'data/brightness' (default: all)",
    )

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a version or a named slice of it: as a new version, COCO, YOLO or FiftyOne",
    )
    p.add_argument("version")
    p.add_argument("--slice", help="a slice named in the configuration (default: everything)")
    p.add_argument(
        "--format",
        default="version",
        choices=["version", "coco", "yolo", "fiftyone"],
        help="version: a new version of the dataset root; coco: annotations.json with every "
        "metric value, results, images; yolo: the Ultralytics layout (data.yaml); fiftyone: "
        "FiftyOne's image detection dataset (data/, labels.json, one labels file per model, "
        "object metrics as attributes, image metrics in metrics.json)",
    )
    p.add_argument("--out", help="folder or URL to write coco / yolo into")
    p.add_argument("--split", help="yolo: the split's name (default train for a train version)")
    p.add_argument("--to", help="dataset root of the new version (default: QM_DATASETS)")
    p.add_argument("--name", help="name of the new version (default VERSION-SLICE)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "show", parents=[common], help="print a materialized table, sorted and filtered"
    )
    p.add_argument("version")
    p.add_argument("--asset", help="asset key (default data/brightness, or the slice's table)")
    p.add_argument("--slice", help="a slice named in the configuration")
    p.add_argument("--sort", choices=["asc", "desc"])
    p.add_argument("--by", default="value", help="column to sort by (default value)")
    p.add_argument("--where", help="pandas query, e.g. 'value < 0.3'")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = sub.add_parser(
        "explore",
        parents=[common],
        help="serve a page on 127.0.0.1 to sort, filter and open images by any metric",
    )
    p.add_argument("version", nargs="?", help="version to open (default: the latest materialized)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")

    p = sub.add_parser("report", parents=[common], help="print a link to a version's HTML report")
    p.add_argument("version")
    p.add_argument(
        "--expires", type=int, default=7 * 24 * 3600, help="seconds a signed link stays valid"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: a message and a non-zero exit on any error (``--debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    # registered first, so it runs last: the interpreter's collection at exit then skips the
    # ~0.5 million objects of a run (~1 s after qm materialize, see cli_dagster.settle_heap)
    atexit.register(gc.freeze)
    try:
        return COMMANDS[args.command](args, Settings.load())
    except QmError as exc:
        if args.debug:
            raise
        print(f"qm: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything unforeseen: still a message, the traceback on request
        if args.debug:
            raise
        print(
            f"qm: error: {type(exc).__name__}: {exc} (--debug shows the traceback)", file=sys.stderr
        )
        return 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.demo import write_demo

    root = args.to or settings.datasets
    for version in write_demo(root, overwrite=args.overwrite):
        print(f"wrote {version.url}")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.importers import (
        ImportSpec,
        import_classification,
        import_ultralytics,
        import_version,
    )

    root = args.to or settings.datasets
    if args.format == "ultralytics":
        if not args.labels:
            raise QmError("--format ultralytics needs --labels pointing at the dataset YAML")
        versions = import_ultralytics(args.labels, root, args.version, args.strict, args.overwrite)
    elif args.format == "classification":
        if not args.images:
            raise QmError("--format classification needs --images")
        version = import_classification(
            args.images,
            root,
            args.version,
            labels=args.labels,
            names=args.names,
            predictions=args.predictions,
            model=args.model,
            strict=args.strict,
            **_version_meta(args),
        )
        versions = [version]
    else:
        if not args.images:
            raise QmError(f"--format {args.format} needs --images")
        spec = ImportSpec(
            images=args.images,
            format=args.format,
            labels=args.labels,
            names=args.names,
            predictions=args.predictions,
            pred_format=args.pred_format,
            pred_names=args.pred_names,
            model=args.model,
            strict=args.strict,
        )
        versions = [import_version(spec, root, args.version, **_version_meta(args))]
    for version in versions:
        print(f"imported {version.url}")
        _print_import_issues(version)
    return 0


def _print_import_issues(version) -> None:
    """The import summary: what was left out of the source, by reason, with a few examples."""
    issues = version.import_issues()
    if not issues:
        return
    print(f"  {len(issues)} issues (dataset/data_issues rows once materialized):")
    for issue in issues[:10]:
        where = f" {issue.where}" if issue.where else ""
        print(f"    {issue.severity}: {issue.file}{where}: {issue.reason}")
    if len(issues) > 10:
        print(f"    ... {len(issues) - 10} more in {version.import_issues_url}")


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.layout import register_folder

    version = register_folder(
        args.folder, args.to or settings.datasets, args.version, **_version_meta(args)
    )
    print(f"registered {version.url}")
    return 0


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.dataset import DatasetRoot

    listing = DatasetRoot(settings.datasets).listing()
    for name in listing.complete:
        print(name)
    for name in listing.incomplete:
        print(f"{name}  (incomplete: no version.json yet)")
    for name in listing.invalid:
        print(f"{name}  (ignored: invalid version name)")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.api import load
    from qm_dagster.show import select_rows, to_json
    from qm_dagster.slices import apply, find

    chosen = find(settings.slices, args.slice) if args.slice else None
    asset = args.asset or (chosen.table if chosen else "data/brightness")
    frame = load(asset, args.version, settings)
    if chosen is not None:
        frame = apply(chosen, frame)
    if asset.startswith("data/") and asset != "data/embeddings":
        names = load("dataset/manifest", args.version, settings)[["image_id", "file_name"]]
        frame = frame.merge(names, on="image_id", how="left")
    rows = select_rows(frame, where=args.where, sort=args.sort, by=args.by, limit=args.limit)
    if args.format == "csv":
        print(rows.to_csv(index=False), end="")
    elif args.format == "json":
        print(to_json(rows))
    else:
        print(rows.to_string(index=False))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from qm_dagster.api import load
    from qm_dagster.dataset import DatasetRoot
    from qm_dagster.export import export_coco, export_fiftyone, export_slice, export_yolo, select
    from qm_dagster.slices import apply, find

    version = DatasetRoot(settings.datasets).version(args.version)
    chosen = find(settings.slices, args.slice) if args.slice else None
    rows = apply(chosen, load(chosen.table, args.version, settings)) if chosen else None
    what = f"{len(rows)} {chosen.level} rows" if chosen else "all"
    if args.format == "version":
        if chosen is None:
            raise QmError("--format version needs --slice (qm register copies a whole folder)")
        new = export_slice(
            version,
            rows,
            chosen,
            args.to or settings.datasets,
            args.name or f"{args.version}-{chosen.name}",
            overwrite=args.overwrite,
        )
        print(f"exported {what} of {args.version} to {new.url}")
        return 0
    if not args.out:
        raise QmError(f"--format {args.format} needs --out")
    selected = select(version, rows, chosen.level if chosen else "image")
    if args.format in ("coco", "fiftyone"):
        tables = [
            _stored(load, f"analysis/quality_table/{lv}", args.version, settings)
            for lv in ("image", "object")
        ]
        exporter = export_coco if args.format == "coco" else export_fiftyone
        written = exporter(selected, args.out, *tables)
    else:
        split = args.split or ("train" if version.meta().kind == "train" else "val")
        written = export_yolo(selected, args.out, split)
    print(f"exported {what} of {args.version} as {args.format}: {written}")
    return 0


def _stored(load, asset: str, version: str, settings: Settings):
    """A materialized table, or None (then exported without its values) with a note."""
    try:
        return load(asset, version, settings)
    except QmError as exc:
        print(f"note: {asset} not included ({exc})")
        return None


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    project = Path(os.environ.get("QM_PROJECT", ".")).resolve()
    if not (project / "definitions.py").is_file():
        raise QmError(
            f"no definitions.py in {project}: run qm materialize from the project "
            "folder (where workspace.yaml is) or set QM_PROJECT"
        )
    sys.path.insert(0, str(project))
    if settings.workers > 1:  # the manifest's and the image pass's pools fork from it
        start_fork_server()
    from qm_dagster.cli_dagster import materialize_version

    ok = materialize_version(project, settings, args.version, args.select, args.debug)
    return 0 if ok else 1


def cmd_explore(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the explorer until Ctrl-C."""
    from qm_dagster.explore.server import make_server

    try:
        server = make_server(settings, args.version, args.host, args.port)
    except OSError as exc:
        raise QmError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    host, port = server.server_address[:2]
    print(
        f"exploring {server.RequestHandlerClass.explorer.default} on http://{host}:{port}/ (Ctrl-C stops)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """The report's link: a local file, or a pre-signed URL made now (never stored)."""
    url = storage.report_url(settings.storage, args.version)
    if not storage.exists(url):
        raise QmError(f"no report for {args.version} at {url}: materialize analysis/report first")
    print(storage.browser_url(url, args.expires))
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "import": cmd_import,
    "register": cmd_register,
    "versions": cmd_versions,
    "materialize": cmd_materialize,
    "export": cmd_export,
    "show": cmd_show,
    "report": cmd_report,
    "explore": cmd_explore,
}

if __name__ == "__main__":
    sys.exit(main())
