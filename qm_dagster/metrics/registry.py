"""One registry for every metric, built-in and custom: a descriptor per metric and ``@metric``.

A metric is a small function plus its descriptor (name, level, description, range, what it reads).
Built-ins register themselves exactly as user metrics do, so everything downstream (assets,
quality table, report) iterates one registry.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from qm_dagster.errors import MetricError

LEVELS = ("image", "object", "prediction")
# What a metric's function receives, per level (the first is the default, what custom metrics get):
#   image:      rgb (RGB array) | view (shared ImageView) | header (size only, no decode)
#               | table (the version's tables, no decode: e.g. object_count)
#   object:     crop (RGB crop, boolean mask, annotation dict) | view (ObjectView, shared planes)
#               | table (the version's tables, vectorised over annotations)
#   prediction: row (prediction dict, match dict) | table (vectorised over predictions)
#               | crop, view: an object pixel metric on the predicted object (see
#               ``predicted_pixels``), in the image pass
READS = {
    "image": ("rgb", "view", "header", "table"),
    "object": ("crop", "view", "table"),
    "prediction": ("row", "table", "crop", "view"),
}
# What one row of the metric's table is; by default the level's own data point.
INDEXES = ("image", "object", "prediction")
PIXEL_READS = ("rgb", "view", "crop")
# How outliers are fenced (qm_dagster.outliers): Tukey's fences on the values, on their logarithm
# (positive heavy-tailed metrics: areas, sharpness), or skew-adjusted with the medcouple.
OUTLIER_RULES = ("tukey", "log", "adjusted")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class MetricSpec:
    """What the rest of the product needs to know about one metric."""

    name: str
    level: str
    fn: Callable[..., float]
    description: str
    reads: str = "rgb"
    index: str = ""
    value_range: tuple[float | None, float | None] = (None, None)
    unit: str = ""
    builtin: bool = False
    code_version: str = "1"
    drift: str = "auto"  # its default drift test (qm_dagster.drift.stattests); "none" = skip
    outliers: str = "adjusted"  # its outlier rule, one of OUTLIER_RULES

    @property
    def reads_pixels(self) -> bool:
        """Whether the metric runs inside the decode pass."""
        return self.reads in PIXEL_READS

    @property
    def on_predictions(self) -> bool:
        """An object pixel metric measured on predicted objects (``model/object_...``)."""
        return self.level == "prediction" and self.reads_pixels

    @property
    def label_twin(self) -> str:
        """The asset key of the object metric whose values this one shares by content: a
        predicted box equal to an annotated one (same image bytes) has the same pixels."""
        return f"label/{self.name}" if self.on_predictions else self.asset_key

    @property
    def asset_key(self) -> str:
        prefix = {"image": "data", "object": "label", "prediction": "model"}[self.level]
        return f"{prefix}/{self.name}"


_REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add ``spec``; a second metric with the same level and name is an error, not an override."""
    if not _NAME.match(spec.name):
        raise MetricError(
            f"metric name {spec.name!r} must match {_NAME.pattern} (it becomes an asset key)"
        )
    if spec.level not in LEVELS:
        raise MetricError(f"metric {spec.name!r}: level {spec.level!r} is not one of {LEVELS}")
    if spec.reads not in READS[spec.level]:
        raise MetricError(
            f"metric {spec.name!r}: reads={spec.reads!r} is not one of {READS[spec.level]} "
            f"for level {spec.level!r}"
        )
    if spec.outliers not in OUTLIER_RULES:
        raise MetricError(
            f"metric {spec.name!r}: outliers={spec.outliers!r} is not one of {OUTLIER_RULES}"
        )
    if spec.index not in INDEXES:
        raise MetricError(f"metric {spec.name!r}: index {spec.index!r} is not one of {INDEXES}")
    key = spec.asset_key
    existing = _REGISTRY.get(key)
    if existing is not None and existing.fn is not spec.fn:
        raise MetricError(
            f"metric {key!r} is defined twice: {_where(existing.fn)} and {_where(spec.fn)}"
        )
    _REGISTRY[key] = spec
    return spec


def _where(fn: Callable[..., object]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def metric(
    level: str = "image",
    description: str | None = None,
    *,
    name: str | None = None,
    reads: str | None = None,
    index: str | None = None,
    value_range: tuple[float | None, float | None] = (None, None),
    unit: str = "",
    code_version: str = "1",
    drift: str = "auto",
    outliers: str = "adjusted",
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register the decorated per-data-point function as a metric (and so as a Dagster asset).

    ``level="image"``: ``fn(image)`` with the RGB ``uint8`` array of one image.
    ``level="object"``: ``fn(crop, mask, annotation)`` with the object's RGB crop (its box), a
    boolean mask of the same shape (the polygon/RLE, or the whole box) and the annotation dict.
    ``level="prediction"``: ``fn(prediction, match)`` with the prediction dict and its COCO match
    (``status``, ``iou``, ``gt_id``). Each returns a float; ``reads`` picks another input (see
    ``READS``). ``drift`` names its default drift test (``auto``: size-aware; ``none``: not
    tested) and ``outliers`` its fence rule (``OUTLIER_RULES``); ``qm.yaml`` can override both.
    """

    def decorate(fn: Callable[..., float]) -> Callable[..., float]:
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        register(
            MetricSpec(
                name=name or fn.__name__,
                level=level,
                fn=fn,
                description=description or doc or fn.__name__,
                reads=reads or READS.get(level, ("",))[0],
                index=index or level,
                value_range=value_range,
                unit=unit,
                builtin=fn.__module__.startswith("qm_dagster.metrics."),
                code_version=code_version,
                drift=drift,
                outliers=outliers,
            )
        )
        return fn

    return decorate


BUILTIN_MODULES = (
    "qm_dagster.metrics.image",
    "qm_dagster.metrics.label",
    "qm_dagster.metrics.objects",
    "qm_dagster.metrics.sequence",
    "qm_dagster.metrics.model",
)


def load_metrics(modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import the built-in metric modules and the user's ``metric_modules`` (registering them)."""
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MetricError(f"metric module {module!r} cannot be imported: {exc}") from exc
    _register_predicted_pixels()


def _register_predicted_pixels() -> None:
    """Every object pixel metric, built-in or custom, also as ``model/<name>`` on predicted
    objects (computed only for the models ``prediction_pixels`` names)."""
    for spec in list(_REGISTRY.values()):
        twin = replace(spec, level="prediction", index="prediction")
        if spec.level == "object" and spec.reads_pixels and twin.asset_key not in _REGISTRY:
            register(replace(twin, description=f"{spec.description} (predicted object)"))


def metrics(
    level: str | None = None,
    modules: tuple[str, ...] | list[str] | None = None,
    on_predictions: bool = False,
) -> list[MetricSpec]:
    """Registered metrics in a stable order (built-ins first), optionally of one level.

    With ``modules``, only built-ins and metrics defined in those modules (or their sub-modules):
    what a configuration asked for, whatever else this process happened to import. Object pixel
    metrics on predictions (opt-in per model) only with ``on_predictions``.
    """
    specs = [
        s
        for s in _REGISTRY.values()
        if (level is None or s.level == level) and (on_predictions or not s.on_predictions)
    ]
    if modules is not None:
        specs = [s for s in specs if s.builtin or _defined_in(s, modules)]
    return sorted(specs, key=lambda s: (not s.builtin, s.level, s.name))


def _defined_in(spec: MetricSpec, modules: tuple[str, ...] | list[str]) -> bool:
    where = spec.fn.__module__
    return any(where == m or where.startswith(f"{m}.") for m in modules)


def get(asset_key_or_name: str, level: str = "image") -> MetricSpec:
    """The metric registered under an asset key (``data/brightness``) or a bare name."""
    spec = _REGISTRY.get(asset_key_or_name)
    if spec is None:
        spec = next(
            (s for s in _REGISTRY.values() if s.name == asset_key_or_name and s.level == level),
            None,
        )
    if spec is None:
        known = ", ".join(s.asset_key for s in metrics())
        raise MetricError(f"no metric {asset_key_or_name!r}; registered: {known}")
    return spec
