"""Tests of iadet.config: inheritance, overrides, strict keys and types, every repo config."""
from pathlib import Path

import pytest
import yaml

from iadet.config import (
    Config,
    ConfigError,
    TestConfig,
    config_files,
    config_to_dict,
    dump_config,
    load_config,
    merge_opts,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------- defaults


def test_defaults_are_the_paper():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.num_classes == 80
    assert cfg.model.backbone.name == "resnet50" and cfg.model.backbone.frozen_stages == 1
    assert cfg.model.neck.p6_input == "c5" and cfg.model.neck.relu_before_p7 is False
    assert cfg.model.anchors.strides == [8, 16, 32, 64, 128]
    assert cfg.model.anchors.ratios == [0.5, 1.0, 2.0]
    assert cfg.model.head.iou_branch is True and cfg.model.head.stacked_convs == 4
    assert cfg.model.test.alpha == 0.5 and cfg.model.test.max_det == 100
    assert cfg.model.test.order == "topk_then_thr"
    assert cfg.input.mean == [123.675, 116.28, 103.53]


# -------------------------------------------------------------------- inheritance


def test_single_base_deep_merge(tmp_path):
    write(tmp_path / "base" / "model.yaml", """
model:
  num_classes: 20
  head: {feat_channels: 128, stacked_convs: 2}
  anchors: {ratios: [0.5, 1.0, 2.0, 3.0]}
""")
    leaf = write(tmp_path / "leaf.yaml", """
_base_: base/model.yaml
model:
  head: {stacked_convs: 3}
  anchors: {ratios: [1.0]}
""")
    cfg = load_config(leaf)
    assert cfg.model.num_classes == 20  # from the base
    assert cfg.model.head.feat_channels == 128  # sibling key of the base kept (deep merge)
    assert cfg.model.head.stacked_convs == 3  # leaf wins
    assert cfg.model.anchors.ratios == [1.0]  # lists replace, they do not merge
    assert cfg.model.backbone == Config().model.backbone  # untouched sections: defaults
    assert config_files(leaf) == [(tmp_path / "base" / "model.yaml").resolve(), leaf.resolve()]


def test_list_of_bases_in_order_and_recursive(tmp_path):
    write(tmp_path / "root.yaml", "model: {num_classes: 5, head: {gn_groups: 8}}\n")
    write(tmp_path / "sub" / "a.yaml", "_base_: ../root.yaml\nmodel: {num_classes: 7}\n")
    write(tmp_path / "b.yaml", "model: {num_classes: 9, neck: {out_channels: 64}}\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: [sub/a.yaml, b.yaml]\ninput: {min_size: 600}\n")
    cfg = load_config(str(leaf))
    assert cfg.model.num_classes == 9  # b.yaml comes after sub/a.yaml
    assert cfg.model.head.gn_groups == 8  # from root.yaml through sub/a.yaml
    assert cfg.model.neck.out_channels == 64
    assert cfg.input.min_size == 600
    names = [p.name for p in config_files(leaf)]
    assert names == ["root.yaml", "a.yaml", "b.yaml", "leaf.yaml"]


def test_missing_base_names_both_files(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", "_base_: nowhere/base.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(leaf)
    assert "nowhere/base.yaml" in str(err.value) and str(leaf) in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)


def test_diamond_inheritance_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "model: {num_classes: 3}\n")
    write(tmp_path / "a.yaml", "_base_: root.yaml\n")
    write(tmp_path / "b.yaml", "_base_: root.yaml\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: [a.yaml, b.yaml]\n")
    assert load_config(leaf).model.num_classes == 3


def test_python_tags_are_refused(tmp_path):
    bad = write(tmp_path / "bad.yaml", 'model: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(ConfigError, match="safe_load") as err:
        load_config(bad)
    assert str(bad) in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


# ---------------------------------------------------------------------- overrides


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, [
        "model.test.alpha=0.4",
        "model.num_classes=20",
        "model.backbone.name=resnet101",
        "model.anchors.ratios=[0.5,1,2]",
        "model.backbone.init=/weights/r101.pth",
        "model.head.norm=gn",
        "model.neck.relu_before_p7=true",
    ])
    assert cfg.model.test.alpha == 0.4
    assert cfg.model.num_classes == 20
    assert cfg.model.backbone.name == "resnet101"
    assert cfg.model.anchors.ratios == [0.5, 1.0, 2.0]
    assert all(type(r) is float for r in cfg.model.anchors.ratios)  # ints converted
    assert cfg.model.backbone.init == "/weights/r101.pth"
    assert cfg.model.head.norm == "gn"
    assert cfg.model.neck.relu_before_p7 is True


@pytest.mark.parametrize("text", ["null", "none", "None", "~"])
def test_alpha_none_and_null(text):
    assert load_config(None, [f"model.test.alpha={text}"]).model.test.alpha is None


def test_alpha_none_in_yaml(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "model: {test: {alpha: none}}\n"))
    assert cfg.model.test.alpha is None
    assert TestConfig(alpha="none").alpha is None


def test_overrides_apply_after_files(tmp_path):
    leaf = write(tmp_path / "c.yaml", "model: {test: {alpha: 0.3, max_det: 50}}\n")
    cfg = load_config(leaf, ["model.test.alpha=0.7"])
    assert cfg.model.test.alpha == 0.7 and cfg.model.test.max_det == 50


@pytest.mark.parametrize("opt, match", [
    ("model.test.alpha", "key=value"),
    ("model.test.alpha=", "no value"),
    ("model.num_classes.x=1", "not a section"),
])
def test_malformed_overrides(opt, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [opt])


def test_merge_opts_returns_a_new_checked_config():
    cfg = Config()
    new = merge_opts(cfg, ["model.test.max_det=300", "model.head.iou_branch=false"])
    assert new.model.test.max_det == 300 and new.model.head.iou_branch is False
    assert cfg.model.test.max_det == 100  # the original is untouched
    with pytest.raises(ConfigError, match="model.test.nms_iou"):
        merge_opts(cfg, ["model.test.nms_iou=1.5"])


# --------------------------------------------------------------- strict keys, types


def test_unknown_key_in_file_suggests_the_right_one(tmp_path):
    leaf = write(tmp_path / "c.yaml", "model:\n  head:\n    iou_brach: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(leaf)
    msg = str(err.value)
    assert "model.head.iou_brach" in msg
    assert "did you mean model.head.iou_branch?" in msg
    assert str(leaf) in msg
    assert err.value.key == "model.head.iou_brach"


def test_unknown_key_in_override_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"did you mean model\.anchors\.ratios\?"):
        load_config(None, ["model.anchors.ratio=[1.0]"])


def test_unknown_top_level_key_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="valid keys: model, input"):
        load_config(write(tmp_path / "c.yaml", "optimizer: {lr: 0.01}\n"))


@pytest.mark.parametrize("opt, key, expected", [
    ("model.num_classes=true", "model.num_classes", "expected int, got bool"),
    ("model.num_classes=1.5", "model.num_classes", "expected int, got float"),
    ("model.test.score_thr=high", "model.test.score_thr", "expected float, got str"),
    ("model.test.score_thr=false", "model.test.score_thr", "expected float, got bool"),
    ("model.test.alpha=[0.5]", "model.test.alpha", "expected float or null, got list"),
    ("model.head.iou_branch=1", "model.head.iou_branch", "expected bool, got int"),
    ("model.anchors.strides=8", "model.anchors.strides", "expected a list of int"),
    ("model.anchors.ratios=[0.5,x]", "model.anchors.ratios[1]", "expected float, got str"),
    ("model.backbone.init=3", "model.backbone.init", "expected str or null, got int"),
    ("model.head=3", "model.head", "expected a mapping"),
])
def test_wrong_type_names_key_and_type(opt, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [opt])
    assert err.value.key == key
    assert expected in str(err.value)


def test_int_is_accepted_for_float():
    cfg = load_config(None, ["model.test.score_thr=0", "model.anchors.octave_base_scale=4"])
    assert cfg.model.test.score_thr == 0.0 and type(cfg.model.test.score_thr) is float
    assert type(cfg.model.anchors.octave_base_scale) is float


def test_yaml_exponent_without_dot_gets_a_hint():
    with pytest.raises(ConfigError, match="1.0e-4"):
        load_config(None, ["model.test.score_thr=1e-4"])


def test_literal_choices_are_listed_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.backbone.name=resnet5"])
    msg = str(err.value)
    assert "'resnet18'" in msg and "'resnext101_32x8d'" in msg
    assert "did you mean 'resnet50'?" in msg


# --------------------------------------------------------------------- value checks


@pytest.mark.parametrize("opt, key", [
    ("model.test.alpha=1.5", "model.test.alpha"),
    ("model.test.alpha=-0.1", "model.test.alpha"),
    ("model.test.nms_iou=1.01", "model.test.nms_iou"),
    ("model.backbone.frozen_stages=5", "model.backbone.frozen_stages"),
    ("model.backbone.frozen_stages=-2", "model.backbone.frozen_stages"),
    ("model.num_classes=0", "model.num_classes"),
    ("model.neck.out_channels=-1", "model.neck.out_channels"),
    ("input.mean=[1.0,2.0]", "input.mean"),
    ("input.std=[1.0,2.0,0.0]", "input.std"),
    ("model.box_coder.weights=[1,1,1]", "model.box_coder.weights"),
    ("model.head.prior_prob=1.0", "model.head.prior_prob"),
    ("train.lr_gamma=0", "train.lr_gamma"),
    ("train.lr_gamma=-0.1", "train.lr_gamma"),
    ("model.assigner.ignore_iof_thr=-1", "model.assigner.ignore_iof_thr"),
    ("model.assigner.ignore_iof_thr=1.5", "model.assigner.ignore_iof_thr"),
    ("data.synthetic.empty_fraction=1.5", "data.synthetic.empty_fraction"),
    ("data.synthetic.max_objects=0", "data.synthetic.max_objects"),
    ("data.synthetic.num_train=-1", "data.synthetic.num_train"),
    ("data.synthetic.num_val=-1", "data.synthetic.num_val"),
    ("data.synthetic.height=31", "data.synthetic.height"),
    ("data.synthetic.width=31", "data.synthetic.width"),
])
def test_out_of_range_values_name_the_key(opt, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [opt])
    assert err.value.key == key
    assert str(err.value).startswith(key)


@pytest.mark.parametrize("opt, key", [
    ("train.lr=.inf", "train.lr"),
    ("train.lr=-.inf", "train.lr"),
    ("model.test.alpha=.nan", "model.test.alpha"),  # Optional[float]
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("model.anchors.ratios=[0.5,.inf]", "model.anchors.ratios[1]"),
    ("train.lr=1" + "0" * 400, "train.lr"),  # an int beyond the largest float
])
def test_non_finite_numbers_name_the_key_and_the_override(opt, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [opt])
    assert err.value.key == key
    assert "must be a finite number" in str(err.value) and f"override {opt!r}" in str(err.value)


@pytest.mark.parametrize("text", ["a: &x {b: *x}\n", "a: &x [1, *x]\n", "model: {test: &x {alpha: [*x]}}\n"])
def test_yaml_alias_inside_itself_in_a_file_names_the_file(tmp_path, text):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match="contains it") as err:
        load_config(path)
    assert str(path) in str(err.value) and err.value.key.startswith(("a", "model.test"))


def test_yaml_alias_inside_itself_in_an_override_names_the_override():
    with pytest.raises(ConfigError, match="contains it") as err:
        load_config(None, ["model.anchors.ratios=&a [1, *a]"])
    assert err.value.key == "model.anchors.ratios[1]" and "override 'model.anchors.ratios=&a [1, *a]'" in str(err.value)


def test_yaml_aliases_expanding_to_a_huge_tree_are_refused(tmp_path):
    lines = ["l0: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]  # 10**7 values
    path = write(tmp_path / "c.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(path)


@pytest.mark.parametrize("text", ["2001-13-45", "1" * 5000])  # yaml raises ValueError for these
def test_yaml_values_python_cannot_build_are_config_errors(text):
    with pytest.raises(ConfigError, match="override 'train.lr="):
        load_config(None, [f"train.lr={text}"])


def test_alpha_bounds_are_inclusive():
    assert load_config(None, ["model.test.alpha=0"]).model.test.alpha == 0.0
    assert load_config(None, ["model.test.alpha=1"]).model.test.alpha == 1.0


def test_out_of_range_value_in_file_names_the_file(tmp_path):
    leaf = write(tmp_path / "c.yaml", "model: {test: {alpha: 2.0}}\n")
    with pytest.raises(ConfigError, match="model.test.alpha") as err:
        load_config(leaf)
    assert str(leaf) in str(err.value)


# ----------------------------------------------------------------- repo configs, dump


REPO_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def test_repo_has_configs():
    assert len(REPO_CONFIGS) >= 5


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_repo_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_repo_model_configs():
    retina = load_config(CONFIGS / "retinanet_r50_fpn_1x_coco.yaml")
    iou_aware = load_config(CONFIGS / "iou_aware_retinanet_r50_fpn_1x_coco.yaml")
    assert retina.model.head.iou_branch is False
    assert iou_aware.model.head.iou_branch is True and iou_aware.model.test.alpha == 0.5
    # paper = defaults, but for the authors' pre-NMS candidates (iadet's default stays "pairs")
    assert iou_aware.model.test.candidates == "anchors"
    iou_aware.model.test.candidates = "pairs"
    assert iou_aware.model == Config().model and iou_aware.input == Config().input
    assert iou_aware.data.train.ann_file.endswith("instances_train2017.json")


def test_torchvision_compat_profile():
    cfg = load_config(CONFIGS / "compat" / "torchvision_retinanet_r50_fpn.yaml")
    m = cfg.model
    assert m.num_classes == 91 and m.backbone.norm == "frozen"
    assert m.neck.p6_input == "p5" and m.neck.relu_before_p7 is True
    assert m.anchors.style == "torchvision" and m.head.iou_branch is False
    assert m.box_coder.clamp == "upper"
    assert (m.assigner.low_quality, m.loss.reg_loss, m.loss.normalize) == ("torchvision", "l1", "image")
    assert (m.test.order, m.test.max_det, m.test.topk_per_level) == ("thr_then_topk", 300, 1000)
    assert (m.test.score_thr, m.test.nms_iou) == (0.05, 0.5)
    assert cfg.input.mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert cfg.input.std == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert (cfg.input.min_size, cfg.input.max_size) == (800, 1333)


@pytest.mark.parametrize("opts", [[], ["model.test.alpha=none", "model.backbone.init=/w.pth",
                                       "model.test.score_thr=1.0e-5", "model.head.norm=gn"]])
def test_dump_load_round_trip(tmp_path, opts):
    cfg = load_config(CONFIGS / "compat" / "torchvision_retinanet_r50_fpn.yaml", opts)
    out = tmp_path / "run" / "config.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg
    assert yaml.safe_load(out.read_text()) == config_to_dict(cfg)
    assert [p.name for p in tmp_path.joinpath("run").iterdir()] == ["config.yaml"]
