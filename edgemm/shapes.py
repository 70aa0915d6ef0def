"""Input shapes given on the command line: `--shape NAME:DIMS` (trtexec's 1x3x640x640 form), or for a
TensorRT profile `NAME:MIN,OPT,MAX`. A fixed shape fills the dynamic dims of the manifest's input, so
synthesised inputs, MACs, calibration and preprocessing sizes all follow it; a profile's OPT does the same.
"""

from __future__ import annotations

from edgemm.errors import EdgemmError

Shape = tuple[int, ...]

SHAPE_HELP = ("an input's shape, NAME:DIMS as 1x3x640x640 (fills the model's dynamic dims; for TensorRT also "
              "NAME:MIN,OPT,MAX); repeatable")


def parse_shape_spec(text: str) -> tuple[str, tuple[Shape, Shape, Shape]]:
    """'video:1x3x224x224,2x3x224x224,4x3x224x224' -> ('video', (min, opt, max)); one shape means fixed."""
    name, sep, shapes = text.rpartition(":")
    if not sep or not name or not shapes:
        raise EdgemmError(f"Shape: {text} | Expected NAME:DIMS like x:1x3x640x640 "
                          "(or NAME:MIN,OPT,MAX for a TensorRT profile).")
    try:
        dims = [tuple(int(d) for d in part.lower().split("x")) for part in shapes.split(",")]
    except ValueError:
        raise EdgemmError(f"Shape: {text} | Expected shapes of positive ints joined by 'x', e.g. 1x3x224x224.") from None
    if len(dims) == 1:
        dims = dims * 3
    if len(dims) != 3:
        raise EdgemmError(f"Shape: {text} | Expected one shape or three (MIN,OPT,MAX); got {len(dims)}.")
    check_profile(name, (dims[0], dims[1], dims[2]))
    return name, (dims[0], dims[1], dims[2])


def check_profile(name: str, prof: tuple[Shape, Shape, Shape], rank: int | None = None) -> None:
    lo, opt, hi = prof
    if len({len(lo), len(opt), len(hi)}) != 1 or (rank is not None and len(lo) != rank):
        raise EdgemmError(f"Shape: {name} | min/opt/max have ranks {len(lo)}/{len(opt)}/{len(hi)}"
                          + (f"; the input has rank {rank}." if rank is not None else "; expected equal ranks."))
    if any(d < 1 for d in lo + opt + hi) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise EdgemmError(f"Shape: {name} | Expected positive dims with min <= opt <= max; got {lo}, {opt}, {hi}.")


def shape_overrides(specs: list[str] | None) -> dict[str, list[int]]:
    """--shape options -> input name -> the shape to use (a profile's OPT). A name given twice is refused."""
    out: dict[str, list[int]] = {}
    for text in specs or []:
        name, (_, opt, _) = parse_shape_spec(text)
        if name in out:
            raise EdgemmError(f"Shape: {name} | Given more than once; expected one --shape per input.")
        out[name] = list(opt)
    return out


def apply_shape(name: str, declared: list, given: list[int], where: str) -> list:
    """The input's shape with --shape applied: same rank, fixed dims kept (a conflict is refused)."""
    if declared and len(declared) != len(given):
        raise EdgemmError(f"Shape: {name} | {'x'.join(map(str, given))} has rank {len(given)} but {where} says the "
                          f"input is {_show(declared)}; expected rank {len(declared)}.")
    for d, g in zip(declared, given):
        if isinstance(d, int) and d > 0 and d != g:
            raise EdgemmError(f"Shape: {name} | {'x'.join(map(str, given))} does not fit {_show(declared)} "
                              f"in {where}; only dynamic dims can be set.")
    return list(given)


def _show(shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"
