"""The explorer's data: pages of one version's quality tables, filtered and sorted by DuckDB over
the stored Parquet files, so a page of a million-image version never holds the table in Python.

A :class:`Query` is what the page asks for (level, sort, value ranges, classes, model, a named
slice, flags); :class:`VersionData` answers it and the detail of one image, and turns a query into
the named slice (pandas ``where``) that ``qm show`` / ``qm export`` understand.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from qm_dagster import storage
from qm_dagster.config import Settings
from qm_dagster.errors import QmError
from qm_dagster.slices import LEVELS, Slice, apply

# The tables a view is made over (asset key by view name); any may be missing (not materialized).
TABLES = {
    "image": "analysis/quality_table/image",
    "object": "analysis/quality_table/object",
    "prediction": "analysis/quality_table/prediction",
    "manifest": "dataset/manifest",
    "annotations": "dataset/annotations",
    "predictions": "dataset/predictions",
    "outliers": "analysis/outliers",
    "duplicates": "analysis/duplicates",
    "label_errors": "analysis/label_errors",
}
# The columns that identify a row of each level's table.
KEYS = {
    "image": ("image_id",),
    "object": ("annotation_id",),
    "prediction": ("model", "prediction_id"),
}
FLAGS = ("outlier", "duplicate", "label_error")
BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
MAX_PAGE = 500
INTEGER_TYPES = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER")
URL_CACHE = 20_000  # image URLs remembered from the pages served
GROUP_SHOWN = 24  # members of an image's duplicate group in its detail
CLASS_COLUMN = {"object": "category", "prediction": "category", "image": "class"}


@dataclass(frozen=True)
class Query:
    """One page request: which rows (filters), in which order, which slice of them."""

    level: str = "image"
    sort: str | None = None
    descending: bool = False
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()
    classes: tuple[str, ...] = ()
    model: str | None = None
    slice: str | None = None
    flags: tuple[str, ...] = ()
    offset: int = 0
    limit: int = 60

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Query:
        """A query from the page's JSON body; anything malformed is a :class:`QmError`."""
        try:
            level = str(raw.get("level") or "image")
            ranges = tuple(
                (str(r["column"]), _number(r.get("min")), _number(r.get("max")))
                for r in raw.get("ranges") or ()
            )
            flags = tuple(str(f) for f in raw.get("flags") or ())
            query = cls(
                level=level,
                sort=raw.get("sort") or None,
                descending=raw.get("order") == "desc",
                ranges=ranges,
                classes=tuple(str(c) for c in raw.get("classes") or ()),
                model=raw.get("model") or None,
                slice=raw.get("slice") or None,
                flags=flags,
                offset=max(0, int(raw.get("offset") or 0)),
                limit=min(MAX_PAGE, max(1, int(raw.get("limit") or 60))),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise QmError(f"malformed query {raw!r}: {exc}") from exc
        if level not in LEVELS:
            raise QmError(f"level {level!r}: expected one of {LEVELS}")
        unknown = set(flags) - set(FLAGS)
        if unknown:
            raise QmError(f"flags {sorted(unknown)}: expected some of {FLAGS}")
        return query


def _number(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def quoted(column: str) -> str:
    """A column name as a DuckDB identifier (names carry ``/``, ``@`` and ``:``)."""
    return '"' + column.replace('"', '""') + '"'


def _text(column: str) -> str:
    return f"CAST({quoted(column)} AS VARCHAR)"


@dataclass
class VersionData:
    """One materialized version as the explorer reads it: a DuckDB view per stored table."""

    settings: Settings
    version: str
    con: duckdb.DuckDBPyConnection = field(init=False)
    views: dict[str, list[str]] = field(init=False)  # view -> its columns
    _slices: dict[str, str] = field(init=False, default_factory=dict)  # slice -> its view
    _ranges: dict[str, dict] = field(init=False, default_factory=dict)  # level -> metric ranges
    _urls: OrderedDict = field(init=False, default_factory=OrderedDict)  # id text -> image URL
    _typed: type = field(init=False, default=str)  # image ids' Python type (COCO: int)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB"})
        self.views = {}
        for view, key in TABLES.items():
            url = storage.asset_url(self.settings.storage, key, self.version)
            if not storage.exists(url):
                continue
            self.con.execute(
                f"CREATE VIEW {view} AS SELECT * FROM read_parquet({_literal(self._path(url))})"
            )
            self.views[view] = [r[0] for r in self.con.execute(f"DESCRIBE {view}").fetchall()]
        if "image" not in self.views:
            raise QmError(
                f"analysis/quality_table/image is not materialized for {self.version!r}: "
                f"run qm materialize {self.version}"
            )
        id_type = self.con.execute(
            "SELECT column_type FROM (DESCRIBE image) WHERE column_name = 'image_id'"
        ).fetchall()[0][0]  # fetched whole: a half-read result would block this connection
        self._typed = int if id_type in INTEGER_TYPES else str

    def _path(self, url: str) -> str:
        """What DuckDB reads: a local path, or the URL through our fsspec filesystem (S3)."""
        fs, path = storage.filesystem(url)
        if storage.is_local(fs):
            return path
        name = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if not self.con.filesystem_is_registered(name):  # once per connection, not per table
            self.con.register_filesystem(fs)
        return url

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own for one request thread (a DuckDB connection is not shared)."""
        return self.con.cursor()

    # --- what there is -------------------------------------------------------------------

    def metrics(self, level: str) -> list[str]:
        """The numeric columns of a level's table that are metrics (not ids or sizes)."""
        if level not in self.views:
            return []
        types = dict(
            self.cursor()
            .execute(f"SELECT column_name, column_type FROM (DESCRIBE {level})")
            .fetchall()
        )
        skip = {*KEYS[level], "image_id", "frame_index", "video_id", "iscrowd", "ok"}
        numeric = (
            "DOUBLE",
            "FLOAT",
            "BIGINT",
            "INTEGER",
            "SMALLINT",
            "TINYINT",
            "BOOLEAN",
            "HUGEINT",
            "DECIMAL",
        )
        return [c for c, t in types.items() if c not in skip and t.startswith(numeric)]

    def meta(self) -> dict[str, Any]:
        """Levels with their metrics (min and max; columns empty in this version left out) and row counts, classes, models, slices, flags on offer."""
        cur = self.cursor()
        levels = {
            level: {
                "metrics": {c: r for c, r in self.ranges(level).items() if r[0] is not None},
                "rows": cur.execute(f"SELECT count(*) FROM {level}").fetchone()[0],
            }
            for level in LEVELS
            if level in self.views
        }
        return {
            "version": self.version,
            "levels": levels,
            "classes": self.classes(),
            "models": self.models(),
            "slices": [
                {"name": s.name, "level": s.level, "where": s.where} for s in self.settings.slices
            ],
            "flags": [f for f in FLAGS if self._flag_view(f) in self.views],
        }

    def classes(self) -> list[str]:
        cur = self.cursor()
        if "class" in self.views["image"]:
            rows = cur.execute(
                "SELECT DISTINCT class FROM image WHERE class IS NOT NULL"
            ).fetchall()
        elif "object" in self.views:
            rows = cur.execute("SELECT DISTINCT category FROM object").fetchall()
        else:
            rows = []
        return sorted(str(r[0]) for r in rows)

    def models(self) -> list[str]:
        if "prediction" not in self.views:
            return []
        rows = self.cursor().execute("SELECT DISTINCT model FROM prediction").fetchall()
        return sorted(str(r[0]) for r in rows)

    def ranges(self, level: str) -> dict[str, list[float | None]]:
        """Min and max of every metric of a level (one scan, then remembered: the page asks
        on every load), for the range inputs."""
        if level in self._ranges:
            return self._ranges[level]
        names = self.metrics(level)
        found: dict[str, list[float | None]] = {}
        if names:
            parts = ", ".join(f"min({quoted(c)}), max({quoted(c)})" for c in names)
            row = self.cursor().execute(f"SELECT {parts} FROM {level}").fetchone()
            found = {c: [_plain(row[2 * i]), _plain(row[2 * i + 1])] for i, c in enumerate(names)}
        self._ranges[level] = found
        return found

    # --- pages ---------------------------------------------------------------------------

    def page(self, query: Query) -> dict[str, Any]:
        """The rows of one page (keys, image, file, the sort value, a box for crops) and the
        number of rows that match."""
        where, params = self.where(query)
        cur = self.cursor()
        total = cur.execute(
            f"SELECT count(*) FROM {query.level} q WHERE {where}", params
        ).fetchone()[0]
        keys = KEYS[query.level]
        sort = self._column(query.level, query.sort) if query.sort else None
        value = f"q.{quoted(sort)}" if sort else "NULL"
        key_list = ", ".join(f"q.{quoted(k)}" for k in keys if k != "image_id")
        page = (
            f"SELECT {key_list + ', ' if key_list else ''}q.image_id, {value} AS value"
            f"{self._label(query.level)} "
            f"FROM {query.level} q WHERE {where} ORDER BY {self._order('q', query)} "
            f"LIMIT {int(query.limit)} OFFSET {int(query.offset)}"
        )
        joins, extra = self._page_joins(query.level)
        sql = (
            f"SELECT p.*{extra} FROM ({page}) p {joins} ORDER BY {self._order('p', query, 'value')}"
        )
        frame = cur.execute(sql, params).df()
        if "url" in frame:  # kept here for the page's thumbnails, not sent to the browser
            self._remember(frame.image_id, frame.url)
            frame = frame.drop(columns="url")
        return {"total": int(total), "offset": query.offset, "rows": _records(frame)}

    def _remember(self, ids: pd.Series, urls: pd.Series) -> None:
        """URLs of the images a page showed, by id as text: their thumbnails are asked next,
        and a lookup in the manifest is a scan of it (~30 ms at 1M images)."""
        with self._lock:
            for image_id, url in zip(ids.astype(str), urls, strict=True):
                self._urls[image_id] = url
                self._urls.move_to_end(image_id)
            while len(self._urls) > URL_CACHE:
                self._urls.popitem(last=False)

    def _label(self, level: str) -> str:
        """A classification version's label on each image card (objects get their category
        from the annotations)."""
        return (
            ', q."class" AS category' if level == "image" and "class" in self.views[level] else ""
        )

    def _order(self, alias: str, query: Query, value: str | None = None) -> str:
        """ORDER BY of a page: the sort column (missing values last), ties by the row's key."""
        order = ", ".join(f"{alias}.{quoted(k)}" for k in KEYS[query.level])
        if not query.sort:
            return order
        direction = "DESC" if query.descending else "ASC"
        return f"{alias}.{quoted(value or query.sort)} {direction} NULLS LAST, {order}"

    def _page_joins(self, level: str) -> tuple[str, str]:
        """Joins that give a page's rows their file name and (object, prediction) box."""
        joins, extra = "", ""
        if "manifest" in self.views:
            joins += " LEFT JOIN manifest m ON m.image_id = p.image_id"
            extra += ", m.file_name, m.width, m.height, m.url"
        if level == "object" and "annotations" in self.views:
            joins += " LEFT JOIN annotations a ON a.annotation_id = p.annotation_id"
            extra += ", a.category, " + ", ".join(f"a.{b}" for b in BOX)
        if level == "prediction" and "predictions" in self.views:
            joins += " LEFT JOIN predictions r ON r.model = p.model AND r.prediction_id = p.prediction_id"
            extra += ", r.category, r.score, " + ", ".join(f"r.{b}" for b in BOX)
        return joins, extra

    def keys(self, query: Query) -> pd.DataFrame:
        """The key columns of every row that matches (for tests and exports)."""
        where, params = self.where(query)
        cols = ", ".join(quoted(k) for k in KEYS[query.level])
        return (
            self.cursor().execute(f"SELECT {cols} FROM {query.level} q WHERE {where}", params).df()
        )

    def where(self, query: Query) -> tuple[str, list[Any]]:
        """The SQL condition (over alias ``q``) and its parameters of a query's filters."""
        level = query.level
        if level not in self.views:
            raise QmError(f"no {level} quality table for {self.version!r}")
        clauses, params = ["TRUE"], []
        for column, low, high in query.ranges:
            name = f"q.{quoted(self._column(level, column))}"
            if low is not None:
                clauses.append(f"{name} >= ?")
                params.append(low)
            if high is not None:
                clauses.append(f"{name} <= ?")
                params.append(high)
        if query.classes:
            marks = ", ".join("?" for _ in query.classes)
            clauses.append(self._class_clause(level, marks))
            params.extend(query.classes)
        if query.model and level == "prediction":
            clauses.append("q.model = ?")
            params.append(query.model)
        for flag in query.flags:
            clauses.append(self._flag_clause(level, flag))
        if query.slice:
            clauses.append(self._slice_clause(level, query.slice))
        return " AND ".join(clauses), params

    def _column(self, level: str, column: str) -> str:
        if column not in self.views.get(level, ()):
            raise QmError(f"{column!r} is not a column of the {level} table of {self.version!r}")
        return column

    def _class_clause(self, level: str, marks: str) -> str:
        if level != "image":
            return f"q.category IN ({marks})"
        if "class" in self.views["image"]:
            return f"q.class IN ({marks})"
        if "annotations" not in self.views:
            raise QmError(f"{self.version!r} has no annotations to filter images by class")
        return f"q.image_id IN (SELECT image_id FROM annotations WHERE category IN ({marks}))"

    @staticmethod
    def _flag_view(flag: str) -> str:
        return {"outlier": "outliers", "duplicate": "duplicates", "label_error": "label_errors"}[
            flag
        ]

    def _flag_clause(self, level: str, flag: str) -> str:
        """Rows flagged as outliers (of their own level), in a duplicate group of this version,
        or in the label-error queue (an image: any of its rows; an object or prediction: itself)."""
        view = self._flag_view(flag)
        if view not in self.views:
            raise QmError(f"{TABLES[view]} is not materialized for {self.version!r}")
        if flag == "duplicate":
            return f"q.image_id IN (SELECT image_id FROM duplicates WHERE version = {_literal(self.version)})"
        if flag == "outlier":
            if level == "prediction":
                return (
                    f"{_text('prediction_id')} IN (SELECT CAST(key AS VARCHAR) FROM outliers "
                    f"WHERE level = 'prediction' AND scope = 'model:' || q.model)"
                )
            key = KEYS[level][-1]
            return (
                f"CAST(q.{quoted(key)} AS VARCHAR) IN "
                f"(SELECT CAST(key AS VARCHAR) FROM outliers WHERE level = {_literal(level)})"
            )
        if level == "image":
            return "q.image_id IN (SELECT image_id FROM label_errors)"
        if level == "object":
            return "q.annotation_id IN (SELECT annotation_id FROM label_errors WHERE annotation_id IS NOT NULL)"
        return (
            "(q.model, q.prediction_id) IN (SELECT model, prediction_id FROM label_errors "
            "WHERE prediction_id IS NOT NULL)"
        )

    def _slice_clause(self, level: str, name: str) -> str:
        """Rows in a named slice: its members are found once (pandas on the columns its filter
        names) and kept as a DuckDB table; a slice of another level selects by image."""
        chosen = next((s for s in self.settings.slices if s.name == name), None)
        if chosen is None:
            raise QmError(
                f"no slice named {name!r}; configured: {[s.name for s in self.settings.slices]}"
            )
        view = self._slice_members(chosen)
        keys = KEYS[chosen.level] if chosen.level == level else ("image_id",)
        cols = ", ".join(quoted(k) for k in keys)
        mine = ", ".join(f"q.{quoted(k)}" for k in keys)
        return f"({mine}) IN (SELECT {cols} FROM {view})"

    def _slice_members(self, chosen: Slice) -> str:
        with self._lock:
            if chosen.name in self._slices:
                return self._slices[chosen.name]
            columns = self.views.get(chosen.level, [])
            named = set(re.findall(r"`([^`]+)`", chosen.where)) | set(
                re.findall(r"[A-Za-z_]\w*", chosen.where)
            )
            keep = [c for c in columns if c in named or c in (*KEYS[chosen.level], "image_id")]
            url = storage.asset_url(self.settings.storage, TABLES[chosen.level], self.version)
            rows = apply(chosen, storage.read_parquet(url, columns=keep))
            keys = list(dict.fromkeys([*KEYS[chosen.level], "image_id"]))
            members = pa.Table.from_pandas(rows[keys], preserve_index=False)
            view = f"slice_{len(self._slices)}"
            # a table of the database: a registered Arrow table is seen only by its own
            # connection, not by the request threads' cursors
            self.con.register("members", members)
            self.con.execute(f"CREATE TABLE {view} AS SELECT * FROM members")
            self.con.unregister("members")
            self._slices[chosen.name] = view
            return view

    # --- one image -----------------------------------------------------------------------

    def image_url(self, image_id: str) -> tuple[str, Any] | None:
        """The stored URL of an image and its id in the table's type (ids arrive as text)."""
        with self._lock:
            url = self._urls.get(image_id)
        if url is not None:
            return url, self._typed(image_id)
        if "manifest" not in self.views:
            return None
        row = (
            self.cursor()
            .execute(
                "SELECT url, image_id FROM manifest WHERE CAST(image_id AS VARCHAR) = ? LIMIT 1",
                [image_id],
            )
            .fetchone()
        )
        return (row[0], row[1]) if row else None

    def detail(self, image_id: str) -> dict[str, Any]:
        """Everything about one image: its metric values, boxes (ground truth and each model's
        predictions with their metric values), outlier flags, duplicate group, label errors."""
        found = self.image_url(image_id)
        if found is None:
            raise QmError(f"no image {image_id!r} in {self.version!r}")
        _, typed = found
        cur = self.cursor()
        one = [typed]
        out: dict[str, Any] = {"image_id": typed}
        out["image"] = _records(cur.execute("SELECT * FROM image WHERE image_id = ?", one).df())[0]
        if "manifest" in self.views:
            manifest = cur.execute(
                "SELECT * EXCLUDE (url) FROM manifest WHERE image_id = ?", one
            ).df()
            out["manifest"] = _records(manifest)[0]
        out["objects"] = self._boxes(cur, "annotations", "object", "annotation_id", one)
        out["predictions"] = self._boxes(cur, "predictions", "prediction", "prediction_id", one)
        out["outliers"] = self._rows(
            cur,
            "outliers",
            "SELECT level, metric, scope, key, value, lower, upper, severity FROM outliers WHERE image_id = ? ORDER BY severity DESC, metric",
            one,
        )
        group = (
            'FROM duplicates WHERE "group" IN '
            '(SELECT "group" FROM duplicates WHERE image_id = ? AND version = ?)'
        )
        # a group of near copies can hold thousands: the first GROUP_SHOWN, and the count
        out["duplicates"] = self._rows(
            cur,
            "duplicates",
            f'SELECT * {group} ORDER BY "group", version, image_id LIMIT {GROUP_SHOWN}',
            [typed, self.version],
        )
        out["duplicate_count"] = (
            cur.execute(f"SELECT count(*) {group}", [typed, self.version]).fetchone()[0]
            if "duplicates" in self.views
            else 0
        )
        out["label_errors"] = self._rows(
            cur,
            "label_errors",
            "SELECT * FROM label_errors WHERE image_id = ? ORDER BY score DESC",
            one,
        )
        return out

    def _boxes(self, cur, view: str, level: str, key: str, one: list) -> list[dict]:
        """An image's annotations or predictions with their boxes and their level's metrics."""
        if view not in self.views:
            return []
        keys = ["model", key] if level == "prediction" else [key]
        cols = [
            c for c in ("model", key, "category", *BOX, "score", "iscrowd") if c in self.views[view]
        ]
        select = ", ".join(f"b.{quoted(c)}" for c in cols)
        metrics = [
            m
            for m in self.metrics(level)
            if m not in cols and m.split("/")[0] in ("label", "model")
        ]
        if metrics and level in self.views:
            select += ", " + ", ".join(f"q.{quoted(m)}" for m in metrics)
            on = " AND ".join(f"q.{quoted(k)} = b.{quoted(k)}" for k in keys)
            sql = f"SELECT {select} FROM {view} b LEFT JOIN {level} q ON {on} WHERE b.image_id = ?"
        else:
            sql = f"SELECT {select} FROM {view} b WHERE b.image_id = ?"
        return _records(
            cur.execute(sql + " ORDER BY " + ", ".join(f"b.{quoted(k)}" for k in keys), one).df()
        )

    def _rows(self, cur, view: str, sql: str, params: list) -> list[dict]:
        return _records(cur.execute(sql, params).df()) if view in self.views else []

    # --- the filter as a named slice -----------------------------------------------------

    def as_slice(self, query: Query, name: str) -> dict[str, Any]:
        """The query as a named slice: its pandas filter, the YAML to add to ``qm.yaml``, the
        commands that use it, and the parts a quality-table filter cannot say."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise QmError(f"slice name {name!r}: letters, digits, . _ - only")
        parts, left_out = [], []
        for column, low, high in query.ranges:
            self._column(query.level, column)
            if low is not None:
                parts.append(f"`{column}` >= {low!r}")
            if high is not None:
                parts.append(f"`{column}` <= {high!r}")
        class_column = CLASS_COLUMN[query.level]
        if query.classes and class_column in self.views[query.level]:
            parts.append(f"`{class_column}` in {json.dumps(list(query.classes))}")
        elif query.classes:
            left_out.append("classes (an image table has no class column: use an object slice)")
        if query.model and query.level == "prediction":
            parts.append(f"model == {query.model!r}")
        if query.slice:
            chosen = next(s for s in self.settings.slices if s.name == query.slice)
            if chosen.level == query.level:
                parts.append(f"({chosen.where})")
            else:
                left_out.append(f"slice {query.slice} (a {chosen.level} slice)")
        left_out.extend(f"flag {f}" for f in query.flags)
        where = " and ".join(parts) or "index == index"
        document = {"slices": {name: {"level": query.level, "where": where}}}
        return {
            "name": name,
            "where": where,
            "yaml": yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000),
            "commands": self._commands(name),
            "left_out": left_out,
        }

    def _commands(self, name: str) -> list[str]:
        """What to run with the saved slice: show it; export it as labels the next tools open
        (COCO, FiftyOne), or, for a version without annotations, as a new version."""
        v = self.version
        show = f"qm show {v} --slice {name}"
        labelled = (
            "annotations" in self.views
            and self.cursor().execute("SELECT count(*) > 0 FROM annotations").fetchone()[0]
        )
        if not labelled:
            return [show, f"qm export {v} --slice {name} --name {v}-{name}"]
        return [
            show,
            f"qm export {v} --slice {name} --format coco --out {v}-{name}-coco",
            f"qm export {v} --slice {name} --format fiftyone --out {v}-{name}-fiftyone",
        ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _plain(value: Any) -> Any:
    """A JSON-ready value: numpy scalars and arrays, timestamps, NaN / NA (None)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (pd.Timestamp, datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    if value is pd.NA:
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a frame as JSON-ready dicts."""
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
