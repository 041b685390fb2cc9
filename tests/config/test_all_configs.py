"""Every config under configs/ loads and builds; each paper config's name says what it holds;
configs/README.md, the config files and iadet/paper_results.py agree with each other."""
import itertools
import re
from pathlib import Path

import pytest
import torch

import iadet
from iadet import paper_results as P
from iadet.models.backbone import RESNET_SPECS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
README = CONFIGS / "README.md"
LEAVES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")
                if "_base_" not in p.relative_to(CONFIGS).parts)
# The paper's configs sit at the top level; subfolders (compat/, mini/) and the quickstart don't.
NON_PAPER_TOP_LEVEL = {"quickstart.yaml"}
PAPER = [c for c in LEAVES if "/" not in c and c not in NON_PAPER_TOP_LEVEL]

NAME = re.compile(r"^(?P<model>iou_aware_retinanet|retinanet)_(?P<bb>r50|r101|x101_32x8d|x101_32x4d)_fpn_"
                  r"(?:(?P<sched>1x)_)?(?P<ds>coco|voc0712)(?P<s600>_600)?(?P<l2>_l2)?(?P<grad>_grad)?\.yaml$")
BACKBONE = {"r50": "resnet50", "r101": "resnet101", "x101_32x8d": "resnext101_32x8d",
            "x101_32x4d": "resnext101_32x4d"}
TABLE_NUMBER = {"table1": 1, "table2": 2, "table3": 3, "table4": 4, "table5": 5, "table6": 6}
# Headers written before this file that quote other reference numbers instead of these rows.
HEADER_EXEMPT = {}  # config name -> tables whose numbers its header may omit


def parse(name: str) -> dict:
    match = NAME.match(name)
    assert match, f"{name}: not a paper config name (see configs/README.md, 'Names')"
    return match.groupdict()


def header(name: str) -> str:
    lines = (CONFIGS / name).read_text().splitlines()
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))


def build(cfg):
    with torch.device("meta"):  # no memory, no init cost: R101 / X101 build in milliseconds
        return iadet.build_detector(cfg)


def test_leaves_found():
    assert len(PAPER) >= 25 and "quickstart.yaml" in LEAVES


@pytest.mark.parametrize("name", LEAVES)
def test_config_loads_and_builds(name):
    cfg = iadet.load_config(CONFIGS / name)
    if cfg.model.backbone.init and not Path(cfg.model.backbone.init).is_file():
        # the study's pretrained start (python -m iadet.tools.pretrain_shapes) is made, not committed
        cfg = iadet.load_config(CONFIGS / name, ["model.backbone.init=null"])
    model = build(cfg)
    assert model.head.num_classes == cfg.model.num_classes
    assert model.head.has_iou_branch == cfg.model.head.iou_branch
    assert (model.backbone.depth, model.backbone.groups, model.backbone.width_per_group) == \
        RESNET_SPECS[cfg.model.backbone.name]


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_name_matches_content(name):
    n = parse(name)
    cfg = iadet.load_config(CONFIGS / name)
    m, iou_aware, coco = cfg.model, n["model"] == "iou_aware_retinanet", n["ds"] == "coco"
    assert m.backbone.name == BACKBONE[n["bb"]]
    assert m.backbone.init is None  # ImageNet weights come from --opts model.backbone.init=PATH
    assert m.head.iou_branch is iou_aware
    assert not (n["grad"] or n["l2"]) or iou_aware, "_grad / _l2 need the IoU branch"
    assert m.loss.iou_target_grad is bool(n["grad"])
    assert m.loss.iou_loss == ("l2" if n["l2"] else "bce")
    assert m.test.alpha == (None if n["l2"] else 0.5)  # Table 2 scores with S = p * IoU
    assert m.num_classes == (80 if coco else 20)
    assert cfg.data.train.type == cfg.data.val.type == ("coco" if coco else "voc")
    small = n["s600"] or not coco
    assert (cfg.input.min_size, cfg.input.max_size) == ((600, 1000) if small else (800, 1333))
    assert cfg.train.optimizer == "SGD" and cfg.train.lr == 0.01 and cfg.train.base_batch_size == 16
    assert cfg.train.epochs == 12 and cfg.train.max_iters is None
    assert cfg.train.lr_steps == [8, 11]  # COCO 1x; VOC: the authors' VOC configs, no repeat
    if coco:
        assert n["sched"] == "1x"
    else:
        assert n["sched"] is None and not n["s600"]
        assert cfg.data.val.voc_sources == ["2007/test"]
    # images per GPU (SPEC section 2): R50 4, R101/X101 2, the 600-pixel R50 runs 6; VOC: the
    # authors' VOC configs, R50 and R101 6 (no X101 VOC config: their COCO batch, 2)
    expected = 2 if n["bb"] != "r50" else 6 if small else 4
    if not coco and n["bb"] == "r101":
        expected = 6
    assert cfg.train.batch_size == expected


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_maps_to_its_rows(name):
    n = parse(name)
    assert name in P.CONFIG_ROWS, f"{name} is missing from iadet.paper_results.CONFIG_ROWS"
    rows = P.CONFIG_ROWS[name]
    assert rows
    row_bb = "x101_32x8d" if n["bb"] == "x101_32x4d" else n["bb"]
    model = "retinanet" if n["model"] == "retinanet" else "iou_aware_grad" if n["grad"] else "iou_aware"
    text = header(name)
    assert text, f"{name}: no header comment"
    for table, key in rows:
        row = P.paper_row(table, key)
        if table == "table5":
            assert n["ds"] == "voc0712" and key == (row_bb, model)
        elif table in ("table1", "table6"):
            assert n["ds"] == "coco" and not n["s600"] and key[0] == row_bb
            expected = {"retinanet": {"retinanet"}, "iou_aware": {"iou_aware"},
                        "iou_aware_grad": {"iou_aware_grad", "predicted", "truth"}}[model]
            assert key[1] in expected
        else:
            assert n["s600"] and n["bb"] == "r50"
            if key == "baseline":
                assert model == "retinanet"
            elif table == "table2":
                assert (key == "l2") == bool(n["l2"]) and model == "iou_aware"
            else:
                assert model == ("iou_aware" if table == "table3" else "iou_aware_grad") and not n["l2"]
        # the header quotes the table and the row's AP (for sweeps: the baseline and α = 0.5 rows)
        if table in HEADER_EXEMPT.get(name, ()):
            continue
        assert re.search(rf"Tables?\s(?:\d,?\s(?:and\s)?)*{TABLE_NUMBER[table]}\b", text), (name, table)
        if table not in ("table3", "table4") or key in ("baseline", "0.5"):
            assert f"{row['AP']}" in text, f"{name}: header lacks {table} {key} AP {row['AP']}"


def test_paper_results_configs_exist_and_cover_every_row():
    assert sorted(P.CONFIG_ROWS) == sorted(PAPER), "CONFIG_ROWS and the paper configs differ"
    covered = {(table, key) for rows in P.CONFIG_ROWS.values() for table, key in rows}
    for table in TABLE_NUMBER:
        for key in P.TABLES[table]:
            assert (table, key) in covered, f"no config reproduces {table} {key}"


def test_paper_results_tables():
    for table, rows in P.TABLES.items():
        for key, row in rows.items():
            assert tuple(row) == P.COLUMNS[table], (table, key)
            assert all(isinstance(v, float) and 0 < v < 100 for v in row.values()), (table, key)
    assert P.TABLE1[("r50", "iou_aware_grad")]["AP"] == 37.8
    assert P.TABLE3["0.5"]["AP"] == 35.5 and P.TABLE4["0.4"]["AP"] == 36.1
    assert P.TABLE2["bce"] == {c: P.TABLE3["none"][c] for c in P.COCO_COLUMNS}  # same model
    assert P.TABLE2["baseline"] == {c: P.TABLE3["baseline"][c] for c in P.COCO_COLUMNS}
    assert P.TABLE3["baseline"] == P.TABLE4["baseline"]
    assert set(P.TABLE6_ALPHA) == set(P.TABLE6)
    assert P.lookup("coco", "table3", "1") == P.TABLE3["1.0"]
    assert P.lookup("coco", "table4", None) == P.TABLE4["none"]
    assert P.lookup("coco", "table1", ("x101", "iou_aware")) == P.TABLE1[("x101_32x8d", "iou_aware")]
    assert P.lookup("coco", "table6", ("r50", "iou_aware_grad"))["truth"] == 50.1
    assert P.lookup("voc", "table1", ("r50", "retinanet")) is None
    assert P.lookup("mini", "table3", "0.5") is None
    assert P.eval_settings("table6", ("r101", "truth")) == {"split": "val", "alpha": 0.2, "iou_source": "truth"}


def _expand(name: str):
    """`a_{x,y}_b.yaml` -> a_x_b.yaml, a_y_b.yaml."""
    match = re.search(r"\{([^}]*)\}", name)
    if not match:
        return [name]
    return [n for part in match.group(1).split(",")
            for n in _expand(name[:match.start()] + part + name[match.end():])]


def _readme_table_rows():
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in README.read_text().splitlines() if line.startswith("| `")]


def test_readme_names_existing_configs_and_every_leaf():
    text = README.read_text()
    named = set()
    for raw in re.findall(r"`(?:configs/)?([\w./{},]+\.yaml)`", text) + re.findall(r"configs/([\w./]+\.yaml)", text):
        for name in _expand(raw):
            if name.startswith("_base_/"):
                assert (CONFIGS / name).is_file(), name
                continue
            assert name in LEAVES, f"configs/README.md names {name}, which does not exist"
            named.add(name)
    first_cells = {name for row in _readme_table_rows() for name in re.findall(r"`([\w./]+\.yaml)`", row[0])}
    missing = sorted(set(LEAVES) - first_cells)
    assert not missing, f"configs/README.md has no table row for {missing}"


def test_readme_rows_quote_the_paper():
    for row in _readme_table_rows():
        names = re.findall(r"`([\w./]+\.yaml)`", row[0])
        if len(names) != 1 or names[0] not in P.CONFIG_ROWS:
            continue
        line = " ".join(row[1:])
        for table, key in P.CONFIG_ROWS[names[0]]:
            if table in ("table3", "table4") and key not in ("baseline", "0.5"):
                continue
            assert f"{P.paper_row(table, key)['AP']}" in line, (names[0], table, key)
