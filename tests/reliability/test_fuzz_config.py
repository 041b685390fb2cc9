"""Fuzzed configs: ``load_config`` (what ``python -m iadet.train`` runs first) returns a valid
Config or raises a ConfigError naming the key that was changed, never any other exception.

Hypothesis mutates the resolved quickstart config (written as a YAML file) and dotted overrides,
deterministically (``derandomize``). Values include non-finite and huge numbers and YAML
aliases that contain themselves; the regression tests below pin the bugs such cases found.
"""
import dataclasses
import math
import re
import tempfile
import typing
from pathlib import Path
from typing import Literal, Union

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iadet.config import Config, ConfigError, config_to_dict, dump_config, load_config
from tests.reliability.harness import QUICKSTART, assert_one_line_error, run_main

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

BASE = config_to_dict(load_config(QUICKSTART))


def paths(tree: dict, prefix=()):
    """Every key of a nested dict as a tuple path, sections included."""
    for key, value in tree.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from paths(value, prefix + (key,))


KEYS = sorted(paths(BASE))
def value_at(tree: dict, path):
    for part in path:
        tree = tree[part]
    return tree


SECTIONS = [()] + [k for k in KEYS if isinstance(value_at(BASE, k), dict)]

# ----------------------------------------------------------------------------- values

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # no lone surrogates: not UTF-8
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3),
    st.sampled_from([2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30, 10 ** 400]),
    st.floats(), st.sampled_from([-0.5, 1.5, 1e308, -1e-308, 0.0]),
    TEXT, st.sampled_from(["none", "null", "~", "", "gn", "SGD", "AdamW", "resnet50", "bf16", "skip", "coco",
                           "1e-4", "1.0e-4", "8,11", "[8, 11]", "yes", "on"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(TEXT, st.integers(-2, 2)), inner, max_size=3)),
    max_leaves=6)


# ---------------------------------------------------------------------------- oracle


def names_the_key(err: ConfigError, dotted: str) -> bool:
    """The error is about ``dotted``: its key, a key inside it, or a check of its section whose
    reason names it (``weight_decay and momentum must be >= 0``); ``_base_`` errors name it."""
    if err.key is None:
        return dotted in str(err)
    if err.key == dotted or err.key.startswith((dotted + ".", dotted + "[")):
        return True
    section, _, leaf = dotted.rpartition(".")
    return err.key.rpartition(".")[0] == section and re.search(rf"(?<![\w.]){re.escape(leaf)}(?!\w)", err.reason)


def check_types(value, tp, key: str) -> None:
    """``value`` has exactly the annotated type; floats are finite."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        assert type(value) is tp, key
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            check_types(getattr(value, f.name), hints[f.name], f"{key}.{f.name}".lstrip("."))
    elif origin is Union:
        if value is not None:
            check_types(value, next(a for a in args if a is not type(None)), key)
    elif origin is Literal:
        assert any(type(value) is type(a) and value == a for a in args), (key, value)
    elif origin is list:
        assert type(value) is list, key
        for i, item in enumerate(value):
            check_types(item, args[0], f"{key}[{i}]")
    else:
        assert type(value) is tp, (key, value)
        if tp is float:
            assert math.isfinite(value), (key, value)


def assert_valid(cfg: Config) -> None:
    check_types(cfg, Config, "")
    with tempfile.TemporaryDirectory() as tmp:
        dump_config(cfg, Path(tmp) / "config.yaml")
        assert load_config(Path(tmp) / "config.yaml") == cfg


# ----------------------------------------------------------------------------- fuzz

EDGE_NUMBERS = [-1, 0, 1, 2 ** 63, 10 ** 400, -0.5, 0.0, 1.5, 1e308, -1e308]


def like(value) -> st.SearchStrategy:
    """Values of the same kind as ``value`` with their edge cases (negative, zero, huge,
    non-finite, alpha outside [0, 1], ...), or anything at all."""
    if isinstance(value, bool):
        kind = st.sampled_from([0, 1, "true", "false", "yes", None])
    elif isinstance(value, (int, float)):
        kind = st.one_of(st.floats(), st.integers(), st.sampled_from(EDGE_NUMBERS))
    elif isinstance(value, str):
        kind = st.one_of(TEXT, st.just(value.upper()), st.just(value[:-1]))
    elif isinstance(value, list):
        kind = st.lists(like(value[0]) if value else SCALARS, max_size=6)
    else:
        kind = VALUES
    return st.one_of(kind, VALUES)


MUTATION = st.one_of(
    st.sampled_from(KEYS).flatmap(lambda path: st.tuples(st.just(path), like(value_at(BASE, path)))),
    st.tuples(st.tuples(st.sampled_from(SECTIONS), TEXT.filter(bool)).map(lambda t: t[0] + (t[1],)), VALUES),
    st.tuples(st.just(("_base_",)), VALUES),
)


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_fuzzed_config_file_loads_valid_or_names_the_key(mutations):
    tree = yaml.safe_load(yaml.safe_dump(BASE))
    changed = []
    for path, value in mutations:
        parent = tree
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):  # an earlier mutation may have replaced the section
            parent[path[-1]] = value
            changed.append(".".join(str(p) for p in path))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.yaml"
        path.write_text(yaml.safe_dump(tree), encoding="utf-8")
        try:
            cfg = load_config(path)
        except ConfigError as err:
            assert any(names_the_key(err, key) for key in changed), (changed, str(err))
            return
    assert_valid(cfg)


LEAVES = sorted(".".join(k) for k in KEYS if not isinstance(value_at(BASE, k), dict))
OVERRIDE_TEXT = st.one_of(TEXT, st.sampled_from([
    ".inf", "-.inf", ".nan", "1.0e+400", "1" * 400, "-1", "0", "1.5", "[1, [2]]", "{a: 1}", "[]", "{}",
    "!!python/object/apply:os.getcwd []", "&a [*a]", "&a {x: *a}", "2001-12-14", "0x1F", "1_000", "'quoted'", "a: b: c",
]))


@FUZZ
@given(key=st.one_of(st.sampled_from(LEAVES), TEXT), text=OVERRIDE_TEXT)
def test_fuzzed_override_loads_valid_or_names_the_key(key, text):
    opt = f"{key}={text}"
    target = opt.partition("=")[0].strip()
    try:
        cfg = load_config(QUICKSTART, [opt])
    except ConfigError as err:
        quoted = repr(opt) in str(err)  # malformed overrides are quoted whole
        prefix = err.key is not None and (target == err.key or target.startswith(err.key + "."))  # unknown part
        assert quoted or prefix or names_the_key(err, target), (opt, str(err))
        return
    assert_valid(cfg)


# ---------------------------------------------------------- regressions (fuzz finds)


def test_huge_integer_for_a_float_key_is_a_config_error(tmp_path, capsys):
    code, err = run_main(tmp_path / "run", ["train.lr=1" + "0" * 400], capsys)
    assert code == 2, f"crashed: {code!r}"
    assert_one_line_error(err, "train.lr")


@pytest.mark.parametrize("opt", ["train.lr=.inf", "model.anchors.octave_base_scale=.inf",
                                 "data.synthetic.min_object_size=.nan", "input.mean=[.nan,116.28,103.53]",
                                 "train.lr_gamma=.nan"])
def test_non_finite_number_is_a_config_error(opt):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [opt])
    assert err.value.key.startswith(opt.partition("=")[0])


@pytest.mark.parametrize("opt", ["data.synthetic.width=10", "data.synthetic.num_val=-1"])
def test_cross_field_error_names_the_key_and_the_override_that_set_it(opt):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [opt])
    assert opt.partition("=")[0].rpartition(".")[2] in err.value.reason
    assert f"override {opt!r}" in str(err.value)


@pytest.mark.parametrize("where", ["file", "override"])
def test_self_referencing_yaml_is_a_config_error(tmp_path, where):
    path = tmp_path / "cycle.yaml"
    path.write_text("model: &a {head: *a}\n" if where == "file" else "")
    opt = "model=&a {head: *a}"
    with pytest.raises(ConfigError) as err:
        load_config(path, [opt] if where == "override" else [])
    assert err.value.key == "model.head"
    assert (str(path) if where == "file" else f"override {opt!r}") in str(err.value)


# ------------------------------------------------------------- through the command


@pytest.mark.parametrize("opt, needle", [
    ("model.num_classes=5", "model.num_classes: is 5 but the train dataset has 3 classes"),
    ("model.backbone.name=resnet5", "model.backbone.name"),
    ("model.test.alpha=1.5", "model.test.alpha: must be in [0, 1]"),
    ("train.lr=-0.1", "train.lr: must be positive"),
    ("model.head.iou_brach=true", "did you mean model.head.iou_branch?"),
    ("train.nonfinite=skipp", "did you mean 'skip'?"),
    ("data.train.ann_file=/nowhere/train.json", "/nowhere/train.json"),
])
def test_bad_config_stops_before_training_naming_the_key(tmp_path, opts, capsys, opt, needle):
    extra = ["data.train.type=coco", "data.train.image_dir=/nowhere"] if "ann_file" in opt else []
    code, err = run_main(tmp_path / "run", opts + extra + [opt], capsys)
    assert code == 2, f"crashed: {code!r}" if isinstance(code, Exception) else err[-3000:]
    assert_one_line_error(err, needle)
    assert not list((tmp_path / "run").glob("*.pth"))
