"""Configs as the one source of their flags (:mod:`xai_jax.config`, :mod:`xai_jax.cli.flags`), on a config that
has a field of every supported kind. The five methods' configs are covered by tests/test_methods.py."""

from __future__ import annotations

import dataclasses

import pytest

from xai_jax import config as C
from xai_jax.cli.flags import add_config_flags, config_from_args, to_argv
from xai_jax.cli.options import Parser
from xai_jax.errors import XaiJaxError


@dataclasses.dataclass(frozen=True)
class Example:
    """An example.

    Attributes:
      k: a count; the ``top`` labels.
      t: a probability cutoff in [0, 1).
      mode, other: one of two modes (both fields
        share this text).
      widths: layer widths.
      weights: per layer, or equal when None.
      taps: where to look.
      layer: an index or a name.
      channels: a range of channels.
      refae: also train the reference, see :class:`xai_jax.methods.cladec.ClaDecResult`.
      fast: go fast.
      batch_size: the training batch (the command's own --batch-size is another).
      hidden: not a flag.

    Returns:
      nothing: this section is not an attribute.
    """

    k: int = C.option(3, low=1)
    t: float = C.option(1e-6, low=0.0, high=1.0, high_open=True)
    mode: str = C.option("mean", choices=("mean", "max"))
    other: str = "x"
    widths: tuple[int, ...] = C.option((500, 2000), low=1)
    weights: tuple[float, ...] | None = C.option(None, low=0.0)
    taps: tuple[str, ...] = C.option(("stem",), choices=("stem", "layer1", "pool"))
    layer: int | str = -2
    channels: tuple[int, int] | None = None
    refae: bool = C.option(True, negative="--no-refae")
    batch_size: int = C.option(256, low=1, flag="--train-batch-size")
    fast: bool = False
    hidden: int = C.option(7, command_line=False)


def parser_and_fields():
    p = Parser(prog="t")
    return p, add_config_flags(p, Example)


def test_attribute_help_reads_every_entry_and_strips_markup():
    helps = C.attribute_help(Example)
    assert helps["k"] == "a count; the top labels."
    assert helps["mode"] == helps["other"] == "one of two modes (both fields share this text)."
    assert helps["refae"] == "also train the reference, see ClaDecResult."
    assert "nothing" not in helps


def test_defaults_are_the_dataclass_defaults():
    p, fields = parser_and_fields()
    assert "hidden" not in fields
    assert config_from_args(Example, p.parse_args([]), fields) == Example()


def test_flags_parse_every_kind():
    p, fields = parser_and_fields()
    args = p.parse_args(["--k", "5", "--t", "0.5", "--mode", "max", "--widths", "3,4", "--weights", "1,0.5",
                         "--taps", "layer1,pool", "--layer", "pool", "--channels", "0:8", "--no-refae", "--fast"])
    assert config_from_args(Example, args, fields) == Example(
        k=5, t=0.5, mode="max", widths=(3, 4), weights=(1.0, 0.5), taps=("layer1", "pool"), layer="pool",
        channels=(0, 8), refae=False, fast=True)
    assert config_from_args(Example, p.parse_args(["--layer", "-3"]), fields).layer == -3


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "argument --k: must be an integer >= 1, got '0'"),
    (["--t", "1"], "argument --t: must lie in [0, 1), got '1'"),
    (["--mode", "median"], "argument --mode: invalid choice: 'median'"),
    (["--widths", "3,0"], "argument --widths: must be comma-separated integers >= 1"),
    (["--taps", "stem,head"], "argument --taps: head not among stem, layer1, pool"),
    (["--channels", "8:2"], "argument --channels: must be START:STOP with 0 <= START < STOP"),
    (["--weights", "nan"], "argument --weights: must be a finite number"),
])
def test_bad_values_stop_with_one_line_naming_the_flag(argv, message, capsys):
    p, _ = parser_and_fields()
    with pytest.raises(SystemExit) as stop:
        p.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_field_with_its_own_flag_does_not_clash_with_the_command_s_flag():
    p = Parser(prog="t")
    p.add_argument("--batch-size", type=int, default=128)
    fields = add_config_flags(p, Example)
    args = p.parse_args(["--batch-size", "64", "--train-batch-size", "32"])
    assert args.batch_size == 64 and config_from_args(Example, args, fields).batch_size == 32


def test_to_argv_round_trips_a_config():
    p, fields = parser_and_fields()
    config = Example(k=9, t=0.25, mode="max", other="y", widths=(1,), weights=(0.0, 2.0), taps=("pool",),
                     layer="layer1", channels=(2, 5), refae=False, fast=True, batch_size=3)
    assert config_from_args(Example, p.parse_args(to_argv(config, fields)), fields) == config
    assert to_argv(Example(), fields) == []


def test_help_lists_every_flag_with_its_default(capsys):
    p, _ = parser_and_fields()
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--k K a count; the top labels. (default: 3)", "(default: 1e-06)", "--no-refae",
                     "--fast, --no-fast", "(default: 500,2000)"):
        assert expected in text, expected


def test_check_validates_choices_and_bounds_in_the_library():
    C.check(Example())
    for bad, message in ((Example(k=0), "k must be >= 1; got 0"), (Example(t=1.0), "t must be < 1; got 1.0"),
                         (Example(mode="x"), "mode must be one of mean, max; got 'x'"),
                         (Example(taps=("stem", "head")), "taps must be one of stem, layer1, pool; got 'head'"),
                         (Example(widths=(3, 0)), "widths must be >= 1; got 0"),
                         (Example(t=float("nan")), "t must be a finite number")):
        with pytest.raises(XaiJaxError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            C.check(bad)


def test_json_round_trip_restores_tuples_and_refuses_unknown_fields():
    config = Example(widths=(1, 2), weights=(0.5,), channels=(0, 4), layer="pool")
    import json
    assert C.from_json(Example, json.loads(json.dumps(C.to_json(config)))) == config
    assert C.from_json(Example, {"k": 4}) == Example(k=4)  # a field it lacks keeps the default
    with pytest.raises(XaiJaxError, match="Example has no field colour"):
        C.from_json(Example, {"colour": 1})


def test_an_undocumented_field_is_refused_when_the_flags_are_built():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        """Nothing documented."""
        size: int = 1
    with pytest.raises(TypeError, match="Undocumented.size is not documented"):
        add_config_flags(Parser(prog="t"), Undocumented)
