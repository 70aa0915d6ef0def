"""The one exception type for user errors.

Anything the user can fix (a missing file, a malformed manifest, a wrong shape, a device that is not
there) raises EdgemmError with a one-line message that names the thing and what was expected. The CLI
turns it into that line on stderr and exit code 1; everything else is a bug and keeps its traceback.
"""


class EdgemmError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""



def number_problem(value, *, minimum: float | None = None, maximum: float | None = None,
                   positive: bool = False) -> str | None:
    """What is wrong with value as a finite number within range, in words ("expected a finite number",
    "expected > 0", ...), or None when nothing is. NaN passes every comparison (`nan <= 0` is False), so a
    range check alone lets it through: every number from a manifest, config, flag or URI comes here."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    if positive and value <= 0:
        return "expected > 0"
    if minimum is not None and value < minimum:
        return f"expected >= {minimum:g}"
    if maximum is not None and value > maximum:
        return f"expected <= {maximum:g}"
    return None


def check_numbers(values: dict, table: dict) -> None:
    """Every number in ``values`` that ``table`` names (key -> (what, unit, bounds for number_problem)),
    when given (not None): finite and within its bounds, else an EdgemmError naming it, in one line. Each
    command declares such a table (NUMBER_BOUNDS) for its numeric flags; upper bounds keep a size from
    exhausting memory or a duration from never ending."""
    for key, (what, unit, bounds) in table.items():
        value = values.get(key)
        problem = None if value is None else number_problem(value, **bounds)
        if problem:
            raise EdgemmError(f"{what}: {value}{' ' + unit if unit else ''} | {problem[0].upper()}{problem[1:]}.")
