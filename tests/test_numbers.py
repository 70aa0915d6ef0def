"""Every number a user gives -- a flag of any command, a key of `edgemm run --config`, an option in a sink's
or a source's URI -- is finite and in range, or the command says so in one line and exits 1. Property-based
(hypothesis): NaN, infinities, negatives, huge values and wrong types, never a traceback. The manifest's
numbers have their own property test in tests/test_bundle.py."""

from __future__ import annotations

import argparse
import importlib
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemm import cli
from edgemm.errors import EdgemmError, number_problem
from edgemm.sinks import make_sink
from edgemm.sources import open_source

ODD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**30, max_value=10**30),
    st.sampled_from([0, -1, 1, 2, 2**31, 2**63, 1e308, -0.0, 5e-324, 0.5, 100, 4096, 10**6]),
)
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numeric_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.type in (int, float) and a.option_strings]


def _bounds(name: str) -> dict:
    return getattr(importlib.import_module(f"edgemm.commands.{name}"), "NUMBER_BOUNDS", {})


def test_every_numeric_flag_of_every_command_has_bounds():
    """A new numeric flag without bounds fails here, before a user finds its NaN."""
    missing = [f"edgemm {name} {a.option_strings[-1]}" for name, p in _commands().items()
               for a in _numeric_actions(p) if a.dest not in _bounds(name)]
    assert missing == []
    # Sizes that would exhaust memory have an upper bound.
    for name, dest in (("bench", "batch"), ("convert", "max_batch"), ("demo", "commands"), ("run", "max_in_flight")):
        assert _bounds(name)[dest][2].get("maximum") is not None, (name, dest)


# A command that is given numbers it accepts goes on to its model, which is not there: one line too, naming the
# model. So every case ends in exactly one line on stderr and exit 1, and the property is about which line.
MISSING = "/nonexistent/model.onnx"


def _base(name: str, tmp_path) -> list[str]:
    return {"bench": [MISSING], "convert": [MISSING, "-o", str(tmp_path / "out")],
            "eval": [MISSING, "--data", str(tmp_path)], "run": [MISSING, "--video", "test://video"],
            "demo": ["--model", MISSING, "--out", str(tmp_path / "demo")], "info": [MISSING]}.get(name, [])


def _one_line(capsys, argv) -> str:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse: a value its type= cannot read
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, (argv, rc, err)
    return err


NUMERIC_COMMANDS = sorted(n for n, p in _commands().items() if _numeric_actions(p))


@PROPERTY
@given(data=st.data())
def test_numeric_flags_property_one_line_error(data, tmp_path, capsys):
    name = data.draw(st.sampled_from(NUMERIC_COMMANDS))
    actions = _numeric_actions(_commands()[name])
    chosen = data.draw(st.lists(st.sampled_from(actions), min_size=1, max_size=3, unique_by=lambda a: a.dest))
    argv = [name, *_base(name, tmp_path)]
    values = {}
    for a in chosen:
        value = data.draw(ODD)
        argv.append(f"{a.option_strings[-1]}={value}")  # =: a negative value is not taken for an option
        try:
            values[a.dest] = a.type(str(value))
        except ValueError:
            values[a.dest] = None  # argparse refuses it: its own one line
    err = _one_line(capsys, argv)
    table = _bounds(name)
    if None in values.values() or "error: argument " in err:
        return  # argparse's own line: a value its type cannot read, or flags that exclude each other
    bad = [what for dest, (what, _, bounds) in table.items() if dest in values
           and number_problem(values[dest], **bounds)]
    if not bad:  # accepted: whatever stops the command next (the missing model, an option it needs) is not them
        assert not any(err.split("error: ")[1].startswith(f"{table[d][0]}: ") for d in values), (argv, err)
    else:
        assert err.split("error: ")[1].startswith(f"{bad[0]}: "), (argv, err)  # the first bad one is named


_CONFIG_NUMBERS = ("duration", "threads", "max_in_flight", "max_skew_ms", "tick_hz", "max_age_s", "conf", "iou")


@PROPERTY
@given(data=st.data())
def test_run_config_numbers_property_one_line_error(data, tmp_path, capsys):
    """--config is read as JSON (which has NaN and Infinity too): the same bounds as the flags."""
    from edgemm.commands.run import NUMBER_BOUNDS

    keys = data.draw(st.lists(st.sampled_from(_CONFIG_NUMBERS + ("rates_hz",)), min_size=1, max_size=3, unique=True))
    config = {"model": MISSING, "video": "test://video"}
    for key in keys:
        config[key] = {"video": data.draw(ODD)} if key == "rates_hz" else data.draw(ODD)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    err = _one_line(capsys, ["run", "--config", str(path)])
    bad_type = [k for k in keys if k == "threads" or k == "max_in_flight"
                if not isinstance(config[k], int) or isinstance(config[k], bool)]
    out_of_range = [k for k in keys if k in NUMBER_BOUNDS and number_problem(config[k], **NUMBER_BOUNDS[k][2])]
    rates_bad = "rates_hz" in keys and number_problem(config["rates_hz"]["video"], positive=True)
    if not (bad_type or out_of_range or rates_bad):
        assert MISSING in err, (config, err)
    else:
        assert MISSING not in err, (config, err)


# ------------------------------------------------------------------------------------------ URI queries

_SINK_NUMBERS = {
    "jsonl:{tmp}/x.jsonl": ("max_mb", "keep"),
    "mqtt://127.0.0.1:1/t": ("reconnect_min", "reconnect_max", "buffer", "buffer_mb"),
    "http://127.0.0.1:0": ("fps", "quality", "width"),
    "rtsp://127.0.0.1:0/live": ("fps", "width"),
}


@PROPERTY
@given(data=st.data())
def test_sink_uri_numbers_property(data, tmp_path):
    """A sink spec with odd numbers: a one-line EdgemmError, or a sink (not opened) whose numbers are finite."""
    base = data.draw(st.sampled_from(sorted(_SINK_NUMBERS)))
    keys = data.draw(st.lists(st.sampled_from(_SINK_NUMBERS[base]), min_size=1, max_size=3, unique=True))
    spec = base.format(tmp=tmp_path) + "?" + "&".join(f"{k}={data.draw(ODD)}" for k in keys)
    try:
        sink = make_sink(spec)
    except EdgemmError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("Sink: ")
        return
    numbers = [v for v in vars(sink).values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert all(math.isfinite(v) for v in numbers), vars(sink)


_SOURCE_NUMBERS = {
    "test://video": ("fps", "frames", "seed", "size"),
    "test://audio": ("sample_rate", "block", "block_s", "buffer_s"),
    "mic://default": ("sample_rate", "channels", "block", "buffer_s", "stall_timeout", "anchor_s", "latency"),
    "http://127.0.0.1:1/cam": ("stall_timeout", "open_timeout", "capture_delay"),
}


@PROPERTY
@given(data=st.data())
def test_source_uri_numbers_property(data):
    """A source URI with odd numbers: a one-line EdgemmError, or a source (made, not opened)."""
    base = data.draw(st.sampled_from(sorted(_SOURCE_NUMBERS)))
    keys = data.draw(st.lists(st.sampled_from(_SOURCE_NUMBERS[base]), min_size=1, max_size=3, unique=True))
    parts = []
    for k in keys:
        v = data.draw(ODD)
        parts.append(f"{k}={v}x{data.draw(ODD)}" if k == "size" else f"{k}={v}")
    uri = base + "?" + "&".join(parts)
    try:
        src = open_source(uri)
    except EdgemmError as exc:
        assert "\n" not in str(exc) and " | " in str(exc), exc  # "Source: URI | ..." ("Microphone: ..." without one)
        return
    numbers = [v for v in vars(src).values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert all(math.isfinite(v) for v in numbers), vars(src)


@pytest.mark.parametrize("uri", ["test://video?size=100000x100000", "test://audio?sample_rate=99999999",
                                 "mic://default?buffer_s=1e9", "mic://default?latency=nan",
                                 "test://video?fps=1e300"])
def test_sizes_that_would_exhaust_memory_are_refused(uri):
    with pytest.raises(EdgemmError) as err:
        open_source(uri)
    assert "\n" not in str(err.value)
