"""Writing what edgemm produces: atomically, readable by the service that reads it, as strict JSON.

Every file is written to a temporary name in its own folder and renamed into place, so a failed or
interrupted run never leaves a half-written file. Temporary files and folders are created private by
Python's tempfile; they get the permissions the user's umask gives any new file, so that a bundle converted
with sudo is still readable by the systemd service's user.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.errors import EdgemmError
from edgemm.lazy import import_pyplot


def umask_mode(base: int = 0o666) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def require_folder(path: str | os.PathLike, what: str = "Output") -> Path:
    """Fail now, not after a long run, when the folder that will hold path does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgemmError(f"{what}: {path} | Folder {path.parent} does not exist; expected an existing folder.")
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write data to path through a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise EdgemmError(f"Output: {path} | Cannot write in {path.parent} ({exc.strerror}).") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, or a folder where the file should go
        Path(tmp).unlink(missing_ok=True)
        raise EdgemmError(f"Output: {path} | Cannot write ({exc.strerror or exc}).") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """Strict-JSON values: numpy scalars and arrays to Python, NaN/inf to null, paths and the rest to str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text (no NaN); compact unless indent is given."""
    separators = (",", ":") if indent is None else None
    try:
        return json.dumps(obj, allow_nan=False, indent=indent, separators=separators)
    except (TypeError, ValueError):  # numpy values or NaN somewhere: clean once, only then
        return json.dumps(jsonable(obj), allow_nan=False, indent=indent, separators=separators)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_atomic(path, to_json(obj, indent) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG by the path's suffix) and close it."""
    plt = import_pyplot()  # there is a figure: matplotlib is here
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgemmError(f"Output: {path} | Cannot write ({exc.strerror}).") from exc
    finally:
        plt.close(fig)
    return path
