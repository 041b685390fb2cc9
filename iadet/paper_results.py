"""The paper's numbers as data: Wu, Li, Wang, "IoU-aware Single-stage Object Detector for
Accurate Localization", Tables 1-6, transcribed from the paper text.

All values are box AP in percent, COCO-style (AP = mean over IoU 0.50:0.05:0.95). Column
names: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (the paper's AP_S, AP_M, AP_L)
and ``AP60``, ``AP70``, ``AP80``, ``AP90`` where a table has them.

Row keys:

- backbones: ``"r50"`` (ResNet-50-FPN), ``"r101"`` (ResNet-101-FPN), ``"x101_32x8d"``
  (the paper's "ResNeXt-32x8d-101-FPN"; see ``CONFIG_ROWS`` for the 32x4d question);
- models: ``"retinanet"``, ``"iou_aware"`` (IoU target detached: the paper's plain rows),
  ``"iou_aware_grad"`` (the "†" rows: the IoU loss's gradient reaches the regression branch
  through the target IoU);
- α sweeps: ``"baseline"`` (RetinaNet), ``"none"`` (S = p·IoU), ``"1.0"`` … ``"0.3"``
  (S = p**α · IoU**(1-α), Eq. 7) — strings, as the paper prints them.

``TABLE1[("r50", "iou_aware_grad")]`` -> ``{"AP": 37.8, "AP50": 55.1, ...}``;
``TABLE3["0.5"]`` -> the α = 0.5 row. ``TABLES``, ``SPLITS``, ``IMAGE_SCALES`` and
``COLUMNS`` describe each table; ``CONFIG_ROWS`` maps each config file under ``configs/`` to
the rows it reproduces, and :func:`eval_settings` says how each row is evaluated.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SWEEP_COLUMNS = COCO_COLUMNS + ("AP60", "AP70", "AP80", "AP90")
VOC_COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")

BACKBONES = {"r50": "ResNet-50-FPN", "r101": "ResNet-101-FPN", "x101_32x8d": "ResNeXt-32x8d-101-FPN"}
MODELS = {"retinanet": "RetinaNet", "iou_aware": "IoU-aware RetinaNet",
          "iou_aware_grad": "IoU-aware RetinaNet †"}
ALPHA_KEYS = ("none", "1.0", "0.9", "0.8", "0.7", "0.6", "0.5", "0.4", "0.3")

Row = Dict[str, float]


def _rows(columns, table: dict) -> dict:
    for key, values in table.items():
        assert len(values) == len(columns), (key, values)
    return {key: dict(zip(columns, values)) for key, values in table.items()}


TABLE1: Dict[Tuple[str, str], Row] = _rows(COCO_COLUMNS, {
    ("r50", "retinanet"): (35.9, 55.8, 38.4, 19.9, 38.8, 45.0),
    ("r101", "retinanet"): (38.1, 58.5, 40.8, 21.2, 41.5, 48.2),
    ("x101_32x8d", "retinanet"): (39.4, 60.2, 42.3, 22.5, 42.8, 49.8),
    ("r50", "iou_aware"): (36.9, 56.1, 40.1, 20.9, 40.0, 46.0),
    ("r101", "iou_aware"): (39.2, 58.2, 42.9, 22.1, 42.7, 50.0),
    ("x101_32x8d", "iou_aware"): (40.6, 60.1, 44.2, 23.4, 43.9, 51.8),
    ("r50", "iou_aware_grad"): (37.8, 55.1, 40.9, 21.1, 41.2, 47.3),
    ("r101", "iou_aware_grad"): (39.7, 56.2, 43.3, 21.9, 43.4, 51.6),
    ("x101_32x8d", "iou_aware_grad"): (41.1, 58.7, 44.5, 23.3, 44.8, 52.7),
})
"""Table 1, COCO **test-dev**, [800, 1333] images, 1x (12 epochs), α = 0.5 (the paper's
default; Table 1 does not state α). Columns ``COCO_COLUMNS``. The RetinaNet rows ("*") are
MMDetection's released models evaluated by the authors, not models the authors trained."""

TABLE1_OTHERS: Dict[Tuple[str, str], Row] = _rows(COCO_COLUMNS, {
    ("YOLOv2", "DarkNet-19"): (21.6, 44.0, 19.2, 5.0, 22.4, 35.5),
    ("YOLOv3", "DarkNet-53"): (33.0, 57.9, 34.4, 18.3, 35.4, 41.9),
    ("SSD300", "VGG16"): (23.2, 41.2, 23.4, 5.3, 23.2, 39.6),
    ("SSD512", "VGG16"): (26.8, 46.5, 27.8, 9.0, 28.9, 41.9),
    ("Faster R-CNN", "ResNet-101-FPN"): (36.2, 59.1, 39.0, 18.2, 39.0, 48.2),
    ("Deformable R-FCN", "Inception-ResNet-v2"): (37.5, 58.0, 40.8, 19.4, 40.1, 52.5),
    ("Mask R-CNN", "ResNet-101-FPN"): (38.2, 60.3, 41.7, 20.1, 41.1, 50.2),
    ("Faster R-CNN*", "ResNet-50-FPN"): (36.2, 58.5, 38.9, 21.0, 38.9, 45.3),
    ("Faster R-CNN*", "ResNet-101-FPN"): (38.8, 60.9, 42.1, 22.6, 42.4, 48.5),
    ("Faster R-CNN*", "ResNeXt-32x8d-101-FPN"): (40.3, 62.7, 44.0, 24.4, 43.7, 49.8),
})
"""Table 1's other detectors (COCO test-dev), keyed (model as printed, backbone as printed);
"*" = MMDetection's reimplementation, 1x; the others are the cited papers' numbers."""

TABLE2: Dict[str, Row] = _rows(COCO_COLUMNS, {
    "baseline": (34.4, 54.1, 36.6, 17.3, 38.5, 47.1),
    "l2": (35.1, 53.8, 37.9, 18.6, 39.2, 47.6),
    "bce": (35.4, 54.1, 38.2, 18.9, 39.3, 48.3),
})
"""Table 2, IoU prediction loss, COCO **val2017**, [600, 1000] images (the ablation
setting), R50, IoU target detached, S = p·IoU (no α). Columns ``COCO_COLUMNS``. The
"baseline" and "bce" rows are the same models as Table 3's "baseline" and "none" rows."""

TABLE3: Dict[str, Row] = _rows(SWEEP_COLUMNS, {
    "baseline": (34.4, 54.1, 36.6, 17.3, 38.5, 47.1, 49.6, 41.8, 29.9, 10.9),
    "none": (35.4, 54.1, 38.2, 18.9, 39.3, 48.3, 50.0, 43.3, 31.9, 12.2),
    "1.0": (34.5, 54.1, 36.7, 17.4, 38.4, 46.8, 49.5, 42.0, 30.1, 11.0),
    "0.9": (34.8, 54.3, 37.1, 17.8, 38.6, 47.0, 49.7, 42.4, 30.4, 11.2),
    "0.8": (35.0, 54.4, 37.4, 18.3, 38.8, 47.6, 49.9, 42.6, 30.7, 11.4),
    "0.7": (35.2, 54.4, 37.7, 18.5, 39.0, 47.9, 50.1, 43.0, 31.2, 11.7),
    "0.6": (35.4, 54.3, 38.0, 18.8, 39.2, 48.2, 50.2, 43.2, 31.5, 12.0),
    "0.5": (35.5, 54.1, 38.2, 18.9, 39.4, 48.3, 50.0, 43.3, 31.9, 12.2),
    "0.4": (35.5, 53.7, 38.4, 18.9, 39.5, 48.4, 49.8, 43.3, 32.5, 12.5),
    "0.3": (35.4, 53.0, 38.5, 18.8, 39.5, 48.4, 49.3, 43.2, 32.8, 12.8),
})
"""Table 3, α sweep (Eq. 7) of the R50 IoU-aware RetinaNet trained with the IoU target
detached, COCO **val2017**, [600, 1000] images. Columns ``SWEEP_COLUMNS``. "baseline" is
RetinaNet R50 at the same scale; every other row is one model scored with a different α."""

TABLE4: Dict[str, Row] = _rows(SWEEP_COLUMNS, {
    "baseline": (34.4, 54.1, 36.6, 17.3, 38.5, 47.1, 49.6, 41.8, 29.9, 10.9),
    "none": (36.0, 52.7, 39.0, 18.4, 40.1, 50.0, 49.0, 43.0, 33.3, 15.9),
    "1.0": (34.9, 52.2, 37.4, 16.7, 39.4, 48.8, 48.2, 41.7, 31.7, 14.6),
    "0.9": (35.4, 52.9, 37.9, 17.5, 39.6, 49.1, 48.8, 42.3, 32.1, 14.8),
    "0.8": (35.7, 53.1, 38.3, 18.0, 39.8, 49.3, 49.1, 42.6, 32.4, 15.1),
    "0.7": (35.8, 53.1, 38.5, 18.1, 39.9, 49.5, 49.1, 42.8, 32.7, 15.3),
    "0.6": (35.9, 53.0, 38.7, 18.3, 40.0, 49.8, 49.1, 42.9, 33.0, 15.6),
    "0.5": (36.0, 52.8, 39.0, 18.4, 40.2, 50.0, 49.0, 43.0, 33.3, 15.9),
    "0.4": (36.1, 52.4, 39.2, 18.4, 40.2, 50.2, 48.8, 43.0, 33.6, 16.3),
    "0.3": (35.9, 51.6, 39.2, 18.2, 40.1, 50.2, 48.2, 43.0, 33.9, 16.6),
})
"""Table 4, the same α sweep for the R50 IoU-aware RetinaNet "†" (gradient through the
target IoU), COCO **val2017**, [600, 1000] images. Columns ``SWEEP_COLUMNS``."""

TABLE5: Dict[Tuple[str, str], Row] = _rows(VOC_COLUMNS, {
    ("r50", "retinanet"): (51.4, 78.8, 74.3, 63.6, 44.9, 15.2),
    ("r101", "retinanet"): (55.1, 81.1, 77.2, 67.5, 50.4, 20.1),
    ("x101_32x8d", "retinanet"): (56.1, 81.9, 78.1, 68.1, 52.0, 21.4),
    ("r50", "iou_aware"): (53.6, 79.0, 75.1, 66.1, 48.7, 19.4),
    ("r101", "iou_aware"): (56.2, 80.5, 76.8, 68.5, 52.4, 22.8),
    ("x101_32x8d", "iou_aware"): (57.6, 81.6, 78.0, 69.5, 54.7, 24.7),
    ("r50", "iou_aware_grad"): (55.8, 79.5, 75.4, 67.0, 51.6, 25.4),
    ("r101", "iou_aware_grad"): (58.0, 80.1, 76.9, 68.8, 55.0, 29.3),
    ("x101_32x8d", "iou_aware_grad"): (59.7, 81.8, 78.6, 70.6, 56.7, 31.4),
})
"""Table 5, PASCAL VOC 07+12 trainval -> **VOC2007 test**, [600, 1000] images, COCO-style
AP. Columns ``VOC_COLUMNS`` (no AP75 / size columns). α not stated (0.5 assumed)."""

TABLE6: Dict[Tuple[str, str], Row] = _rows(COCO_COLUMNS, {
    ("r50", "retinanet"): (35.6, 55.5, 38.3, 20.0, 39.6, 46.8),
    ("r101", "retinanet"): (37.7, 57.5, 40.4, 21.1, 42.2, 49.5),
    ("x101_32x8d", "retinanet"): (39.0, 59.4, 41.7, 22.6, 43.4, 50.9),
    ("r50", "predicted"): (37.3, 54.4, 40.2, 20.4, 41.2, 48.7),
    ("r101", "predicted"): (39.4, 56.2, 42.9, 21.6, 44.0, 52.9),
    ("x101_32x8d", "predicted"): (40.9, 58.1, 44.3, 22.4, 45.7, 54.5),
    ("r50", "truth"): (50.1, 61.1, 57.7, 36.1, 56.9, 61.0),
    ("r101", "truth"): (52.1, 63.2, 59.7, 36.7, 59.1, 65.1),
    ("x101_32x8d", "truth"): (53.2, 64.7, 60.8, 37.2, 60.3, 65.7),
})
"""Table 6, upper bound, COCO **val2017**, [800, 1333] images. Columns ``COCO_COLUMNS``.
Keys (backbone, source): "retinanet" = the RetinaNet baseline (S = p); "predicted" = the
IoU-aware RetinaNet with its predicted IoU; "truth" = the same model with IoU_truth (the
largest IoU of the box with any ground-truth box of the image) in Eq. 7; α in
``TABLE6_ALPHA`` (the best α per row, as the paper chose it). The paper does not say which
IoU-aware variant it used; the numbers fit the "†" models: for the same RetinaNet model
test-dev is 0.3-0.4 AP above val2017 (Table 1 vs Table 6), the † rows' test-dev AP is
0.2-0.5 above these val numbers while the plain rows' is 0.2-0.4 *below* them, so
``CONFIG_ROWS`` assigns these rows to the ``_grad`` configs. The "retinanet" rows equal
MMDetection's model-zoo val2017 numbers of its RetinaNet R50 / R101 / X101-32x4d 1x models."""

TABLE6_ALPHA: Dict[Tuple[str, str], Optional[float]] = {
    ("r50", "retinanet"): None, ("r101", "retinanet"): None, ("x101_32x8d", "retinanet"): None,
    ("r50", "predicted"): 0.5, ("r101", "predicted"): 0.4, ("x101_32x8d", "predicted"): 0.4,
    ("r50", "truth"): 0.2, ("r101", "truth"): 0.2, ("x101_32x8d", "truth"): 0.2,
}
"""Table 6's α column (None: RetinaNet, no IoU: S = p)."""

TABLES = {"table1": TABLE1, "table1_others": TABLE1_OTHERS, "table2": TABLE2, "table3": TABLE3,
          "table4": TABLE4, "table5": TABLE5, "table6": TABLE6}
SPLITS = {"table1": "COCO test-dev", "table1_others": "COCO test-dev", "table2": "COCO val2017",
          "table3": "COCO val2017", "table4": "COCO val2017", "table5": "VOC2007 test",
          "table6": "COCO val2017"}
IMAGE_SCALES = {"table1": (800, 1333), "table1_others": (800, 1333), "table2": (600, 1000),
                "table3": (600, 1000), "table4": (600, 1000), "table5": (600, 1000),
                "table6": (800, 1333)}
COLUMNS = {"table1": COCO_COLUMNS, "table1_others": COCO_COLUMNS, "table2": COCO_COLUMNS,
           "table3": SWEEP_COLUMNS, "table4": SWEEP_COLUMNS, "table5": VOC_COLUMNS,
           "table6": COCO_COLUMNS}


# config file (relative to configs/) -> the (table, key) rows it reproduces
CONFIG_ROWS: Dict[str, Tuple[Tuple[str, object], ...]] = {}
"""Each leaf config under ``configs/`` (path relative to ``configs/``) -> the paper rows it
reproduces, as ``(table name, row key)`` pairs, e.g. ``("table1", ("r50", "iou_aware"))``.

The ``x101_32x4d`` configs are *alternatives* for the paper's X101 rows: the paper prints
"ResNeXt-32x8d-101", but the authors' released configs use ResNeXt-101 32x4d, and the
RetinaNet X101 baseline of Table 6 (39.0 val2017) is MMDetection's RetinaNet X101-32x4d
model; they map to the same ``x101_32x8d`` rows. ``quickstart.yaml``, ``compat/`` and
``mini/`` reproduce no paper row and are absent."""

for _bb in ("r50", "r101", "x101_32x8d", "x101_32x4d"):
    _row_bb = "x101_32x8d" if _bb == "x101_32x4d" else _bb
    CONFIG_ROWS[f"retinanet_{_bb}_fpn_1x_coco.yaml"] = (
        ("table1", (_row_bb, "retinanet")), ("table6", (_row_bb, "retinanet")))
    CONFIG_ROWS[f"iou_aware_retinanet_{_bb}_fpn_1x_coco.yaml"] = (("table1", (_row_bb, "iou_aware")),)
    CONFIG_ROWS[f"iou_aware_retinanet_{_bb}_fpn_1x_coco_grad.yaml"] = (
        ("table1", (_row_bb, "iou_aware_grad")), ("table6", (_row_bb, "predicted")),
        ("table6", (_row_bb, "truth")))
for _bb in ("r50", "r101", "x101_32x8d"):
    CONFIG_ROWS[f"retinanet_{_bb}_fpn_voc0712.yaml"] = (("table5", (_bb, "retinanet")),)
    CONFIG_ROWS[f"iou_aware_retinanet_{_bb}_fpn_voc0712.yaml"] = (("table5", (_bb, "iou_aware")),)
    CONFIG_ROWS[f"iou_aware_retinanet_{_bb}_fpn_voc0712_grad.yaml"] = (
        ("table5", (_bb, "iou_aware_grad")),)
CONFIG_ROWS["retinanet_r50_fpn_1x_coco_600.yaml"] = (
    ("table2", "baseline"), ("table3", "baseline"), ("table4", "baseline"))
CONFIG_ROWS["iou_aware_retinanet_r50_fpn_1x_coco_600.yaml"] = (
    ("table2", "bce"),) + tuple(("table3", a) for a in ALPHA_KEYS)
CONFIG_ROWS["iou_aware_retinanet_r50_fpn_1x_coco_600_l2.yaml"] = (("table2", "l2"),)
CONFIG_ROWS["iou_aware_retinanet_r50_fpn_1x_coco_600_grad.yaml"] = tuple(("table4", a) for a in ALPHA_KEYS)
del _bb, _row_bb


def paper_row(table: str, key) -> Row:
    """The row ``key`` of ``table`` (``"table1"`` … ``"table6"``, ``"table1_others"``)."""
    return TABLES[table][key]


def paper_rows(config: str):
    """``[(table, key, row), ...]`` for a config file name relative to ``configs/``."""
    return [(table, key, paper_row(table, key)) for table, key in CONFIG_ROWS.get(config, ())]


def eval_settings(table: str, key) -> dict:
    """How the row is evaluated with ``python -m iadet.eval``: ``split`` (``val`` / ``test``
    of the config's data section), ``alpha`` (None = "none", S = p·IoU; for RetinaNet rows
    the value does not matter: S = p) and ``iou_source`` (``predicted`` / ``truth``)."""
    split = "test" if table in ("table1", "table1_others") else "val"
    alpha: Optional[float] = 0.5
    source = "predicted"
    if table == "table2":
        alpha = None
    elif table in ("table3", "table4"):
        alpha = None if key in ("none", "baseline") else float(key)
    elif table == "table6":
        alpha = TABLE6_ALPHA[key]
        source = "truth" if key[1] == "truth" else "predicted"
    return {"split": split, "alpha": alpha, "iou_source": source}


_BACKBONE_ALIASES = {"x101": "x101_32x8d", "x101_32x4d": "x101_32x8d"}
_KIND_TABLES = {"coco": ("table1", "table1_others", "table2", "table3", "table4", "table6"),
                "voc": ("table5",)}


def alpha_key(alpha) -> str:
    """A Table 3/4 row key from an α as iadet prints it: None / "none" -> "none", 1 / "1" /
    1.0 -> "1.0", "0.5" -> "0.5"; "baseline" stays. Raises ValueError on anything else."""
    if alpha is None:
        return "none"
    if isinstance(alpha, str):
        text = alpha.strip().lower()
        if text in ("none", "baseline"):
            return text
        alpha = float(text)
    return f"{float(alpha):.1f}"


def lookup(kind: str, table: str, key) -> Optional[dict]:
    """A forgiving lookup for report generators; None where the paper has no such row.

    ``kind`` is the dataset of the study (``"coco"``: Tables 1-4 and 6, ``"voc"``: Table 5;
    anything else, e.g. ``"mini"``, has no paper rows). Backbone ``"x101"`` and
    ``"x101_32x4d"`` stand for the paper's ``"x101_32x8d"`` rows. Tables 3/4 take any α
    form (:func:`alpha_key`). Table 6 also takes ``(backbone, model)``: for
    ``"iou_aware_grad"`` it gives ``{"baseline", "predicted", "truth"}`` APs (plus
    ``"alpha_predicted"``, ``"alpha_truth"``), for ``"retinanet"`` ``{"baseline"}``, and None
    for ``"iou_aware"`` (Table 6 is taken to be the † models, see ``TABLE6``).
    """
    if table not in _KIND_TABLES.get(kind, ()):
        return None
    rows = TABLES[table]
    if table in ("table3", "table4"):
        try:
            return rows.get(alpha_key(key))
        except (TypeError, ValueError):
            return None
    if not (isinstance(key, tuple) and len(key) == 2) or table == "table1_others":
        return rows.get(key)
    backbone, second = _BACKBONE_ALIASES.get(key[0], key[0]), key[1]
    if table == "table6" and second in MODELS:
        if (backbone, "retinanet") not in rows or second == "iou_aware":
            return None
        out = {"baseline": rows[(backbone, "retinanet")]["AP"]}
        if second == "iou_aware_grad":
            out.update(predicted=rows[(backbone, "predicted")]["AP"], truth=rows[(backbone, "truth")]["AP"],
                       alpha_predicted=TABLE6_ALPHA[(backbone, "predicted")],
                       alpha_truth=TABLE6_ALPHA[(backbone, "truth")])
        return out
    return rows.get((backbone, second))
