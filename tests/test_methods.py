"""The contract every method of :data:`xai_jax.methods.METHODS` keeps, checked for each without naming any:

- its config imports no JAX, documents every field, and is the one source of its flags: every command-line
  field has a flag on one of the method's verbs with the library's default, and config -> flags -> config is
  the identity for a config that differs from the defaults in every field;
- every verb's ``--help`` works, and a config value out of bounds stops the command with one line naming the
  flag, before anything is written;
- its result (the one ``xai-jax demo`` fits on the digits, saved under ``demo/<name>/``) survives save and load
  unchanged, and a damaged copy fails with one line;
- its demo section, run a second time on the same data, compiles no new XLA program (one trace per pass).

A sixth method registered in :mod:`xai_jax.methods` is covered without editing this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from xai_jax import cli
from xai_jax import config as C
from xai_jax.cli.flags import add_config_flags, config_from_args, dest_of, flag_name, to_argv
from xai_jax.cli.options import Parser
from xai_jax.methods import METHODS

NAMES = list(METHODS)


def verbs(name: str) -> dict[str, argparse.ArgumentParser]:
    """``{verb: parser}`` of ``xai-jax NAME`` (``{"": parser}`` for a method without verbs)."""
    parser = cli.build_parser()
    method = _subparsers(parser)[name]
    found = _subparsers(method)
    return found or {"": method}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def main(argv: list[str]) -> int:
    """``xai-jax ARGV``'s exit status (``--help`` and parse errors exit from argparse)."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


def command_line_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if C.option_of(f).command_line]


def other_value(field: dataclasses.Field, annotation):
    """A value of the field that differs from its default and satisfies its declared choices and bounds."""
    opt, default = C.option_of(field), field.default
    inner, _ = C.split_optional(annotation)
    if inner is bool:
        return not default
    item = C.item_type(inner)
    if opt.choices is not None and item is None:
        return next(c for c in opt.choices if c != default)
    if item is not None:
        if opt.choices is not None:
            candidates = [(opt.choices[-1],), tuple(opt.choices[:2])]
        elif typing_pair(inner):
            candidates = [(1, 3), (0, 2)]
        elif item is str:
            candidates = [("a", "b")]
        else:
            low = 1 if opt.low is None else opt.low
            candidates = [tuple(item(low + d) for d in (2, 1)), (item(low + 3),)]
    elif inner is str:
        candidates = [(default or "") + " x"]
    elif set(getattr(inner, "__args__", ())) == {int, str}:
        candidates = ["pool", -3]
    else:
        base = default if default is not None else (opt.low if opt.low is not None else 0)
        steps = (1, -1, 2) if inner is int else (0.5 * base, 0.75 * base + 0.125, base + 0.25, base - 0.25, 0.5)
        candidates = [inner(base + s) if inner is int else inner(s) for s in steps]
    for value in candidates:
        if value == default:
            continue
        try:
            C._check_value(field.name, value, annotation, opt)  # noqa: SLF001 - the rule the library applies
        except Exception:  # noqa: BLE001
            continue
        return value
    raise AssertionError(f"no non-default value found for {field.name}")


def typing_pair(annotation) -> bool:
    return getattr(annotation, "__args__", None) == (int, int)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_documented_and_validated_by_its_metadata(name):
    cls = METHODS[name].config_type
    helps = C.attribute_help(cls)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in helps]
    assert not missing, f"{cls.__name__} does not document {missing}"
    config = cls()
    C.check(config)
    assert C.from_json(cls, json.loads(json.dumps(C.to_json(config)))) == config


@pytest.mark.parametrize("name", NAMES)
def test_config_flags_config_round_trip(name):
    cls = METHODS[name].config_type
    types_ = C.field_types(cls)
    parser = Parser(prog="t")
    fields = add_config_flags(parser, cls)
    changed = cls(**{f.name: other_value(f, types_[f.name]) for f in command_line_fields(cls)})
    assert all(getattr(changed, f) != getattr(cls(), f) for f in fields)
    assert config_from_args(cls, parser.parse_args(to_argv(changed, fields)), fields) == changed
    assert config_from_args(cls, parser.parse_args([]), fields) == cls()


@pytest.mark.parametrize("name", NAMES)
def test_every_config_field_is_a_flag_of_the_command_with_the_library_default(name):
    cls = METHODS[name].config_type
    found: dict[str, list] = {}
    method = _subparsers(cli.build_parser())[name]
    for verb, parser in {"": method, **verbs(name)}.items():
        for action in parser._actions:  # noqa: SLF001
            found.setdefault(action.dest, []).append((verb, action))
    for field in command_line_fields(cls):
        assert dest_of(field) in found, f"xai-jax {name} has no flag for {cls.__name__}.{field.name}"
        names = (flag_name(field), C.option_of(field).negative)
        flagged = [(verb, a) for verb, a in found[dest_of(field)] if any(n in a.option_strings for n in names)]
        assert flagged, f"xai-jax {name}: {cls.__name__}.{field.name} lands in {dest_of(field)} by another flag"
        # a verb's own option of the same name (`cladec occlusion --batch-size`) may differ; the config's may not
        defaults = [a.default for _, a in flagged if not a.required and a.default is not argparse.SUPPRESS]
        assert not defaults or field.default in defaults, (field.name, defaults, field.default)


@pytest.mark.parametrize("name", NAMES)
def test_help_of_every_verb(name, capsys):
    for verb in verbs(name):
        assert main([name, *([verb] if verb else []), "--help"]) == 0
        assert "usage: xai-jax" in capsys.readouterr().out


def bounded_field(name):
    """A verb and an integer config field with a lower bound, for a value below it."""
    cls = METHODS[name].config_type
    types_ = C.field_types(cls)
    for verb, parser in verbs(name).items():
        dests = {a.dest for a in parser._actions}  # noqa: SLF001
        for field in command_line_fields(cls):
            opt = C.option_of(field)
            if dest_of(field) in dests and C.split_optional(types_[field.name])[0] is int and opt.low is not None:
                return verb, field
    pytest.fail(f"{name}: no bounded integer flag")


@pytest.mark.parametrize("name", NAMES)
def test_a_value_out_of_bounds_is_one_line_and_writes_nothing(name, tmp_path, capsys):
    verb, field = bounded_field(name)
    bad = str(int(C.option_of(field).low) - 1)
    out = tmp_path / "out"
    code = main([name, *([verb] if verb else []), flag_name(field), bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("xai-jax: error: argument ") and flag_name(field) in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_the_configs_and_the_parser_load_no_jax():
    code = ("import sys; from xai_jax.methods import METHODS; [m.config_type for m in METHODS.values()]; "
            "from xai_jax import cli; cli.build_parser(); "
            "bad = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- results, from the demo's fits ---------------------------------------------------------------------------

def _same(a, b, where: str) -> None:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for field in dataclasses.fields(a):
            _same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)) and not isinstance(a, str):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape") and hasattr(a, "dtype"):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.asarray(a).shape == np.asarray(b).shape, where
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    else:
        assert a == b or (a != a and b != b), (where, a, b)


# The tests that read the demo's folder run on one worker (`pytest -n 2 --dist loadgroup`), so the demo runs once.
DEMO = pytest.mark.xdist_group("demo")


@DEMO
@pytest.mark.parametrize("name", NAMES)
def test_result_save_load_round_trip(name, demo_out, tmp_path):
    cls = METHODS[name].result_type
    loaded = cls.load(demo_out / name)
    loaded.save(tmp_path / "copy")
    _same(cls.load(tmp_path / "copy"), loaded, cls.__name__)


@DEMO
@pytest.mark.parametrize("name", NAMES)
def test_a_damaged_result_is_one_line(name, demo_out, tmp_path):
    from xai_jax.errors import XaiJaxError
    cls = METHODS[name].result_type
    cls.load(demo_out / name).save(tmp_path / "copy")
    summary = tmp_path / "copy" / f"{cls.STEM}.json"
    summary.write_text(summary.read_text()[:-40])
    with pytest.raises(XaiJaxError) as err:
        cls.load(tmp_path / "copy")
    assert "\n" not in str(err.value) and str(tmp_path / "copy") in str(err.value)


# --- one trace per pass -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_context(demo_out):
    from xai_jax import models, weights
    from xai_jax.data import DigitsSource
    from xai_jax.demo.context import DemoContext
    variables = weights.load(models.get(DemoContext.model), str(demo_out / "model"))
    return DemoContext(variables=variables, train_set=DigitsSource("train"), test_set=DigitsSource("test"),
                       progress=False)


@DEMO
@pytest.mark.parametrize("name", NAMES)
def test_a_second_fit_on_the_same_shapes_compiles_nothing(name, demo_context, monkeypatch):
    """The method's demo section (its fit and explanations on the digits) reuses every compiled program when it
    runs again: no jit built per call, no hyper-parameter baked into a trace."""
    from conftest import shared_path
    from xai_jax import debug
    from xai_jax.viz.report import Report
    monkeypatch.setenv("NLTK_DATA", str(shared_path("nltk_data")))
    section = METHODS[name].demo.section
    section(Report("warm-up"), demo_context)
    with debug.assert_max_compiles(0, f"the {name} demo section, run again"):
        section(Report("again"), demo_context)
