"""Splitting a source URI into scheme, location and options, and typing the options.

Parsed by hand, not with urllib: device names such as ``mic://hw:1,0`` or ``gst://videotestsrc ! appsink``
are not URLs, and urlparse would cut them at the colon or the exclamation mark. Options come after a ``?``
(``test://video?size=640x480&fps=15``, ``speech.wav?resample=false``) and can also be given as keyword
arguments, which win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from edgemm.errors import EdgemmError, number_problem

# Schemes whose location is a URL handed to FFmpeg as a whole, query string included.
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
VIDEO_SCHEMES = ("v4l2", "csi", "gst", *NETWORK_SCHEMES)
AUDIO_SCHEMES = ("mic",)
ALL_SCHEMES = ("file", "test", *VIDEO_SCHEMES, *AUDIO_SCHEMES)


@dataclass
class ParsedUri:
    uri: str  # what the user wrote
    scheme: str  # "" for a plain path or a camera index
    location: str  # everything after "scheme://" without our options
    options: dict = field(default_factory=dict)  # query options, then keyword options (which win)
    query_keys: frozenset = frozenset()  # which options the user typed in the URI (checked strictly)


def parse_uri(uri, options: dict | None = None) -> ParsedUri:
    """Split ``scheme://location?opt=value&...``; network URLs keep their query (it belongs to the server)."""
    text = str(uri).strip()
    if not text:
        raise EdgemmError("Source: '' | Empty URI; expected e.g. v4l2:///dev/video0, rtsp://..., mic://default, "
                          "a file path or test://video.")
    scheme, sep, rest = text.partition("://")
    if not sep:
        # A plain path, a camera index ("0"), or "name:" forms that are not ours. Options after a "?" as for
        # file:// (speech.wav?resample=false), unless the whole text names a file that exists.
        location, query_keys, opts = text, frozenset(), {}
        if "?" in text and not Path(text).exists():
            location, _, query = text.partition("?")
            opts = dict(parse_qsl(query, keep_blank_values=True))
            query_keys = frozenset(opts)
        return ParsedUri(text, "", location, opts | dict(options or {}), query_keys)
    scheme = scheme.lower()
    if scheme not in ALL_SCHEMES:
        raise EdgemmError(f"Source: {text} | Unknown URI scheme '{scheme}://'; expected one of "
                          + ", ".join(f"{s}://" for s in ALL_SCHEMES) + " or a file path.")
    opts: dict = {}
    location = rest
    if scheme not in NETWORK_SCHEMES and scheme != "gst" and "?" in rest:
        location, _, query = rest.partition("?")
        opts = dict(parse_qsl(query, keep_blank_values=True))
    if scheme not in NETWORK_SCHEMES and scheme != "gst":
        location = unquote(location)
    query_keys = frozenset(opts)
    opts.update(options or {})
    return ParsedUri(text, scheme, location, opts, query_keys)


# Upper bounds of the numeric options, by name: what a source allocates or waits for grows with them (a ring
# of buffer_s x sample_rate x channels, a frame of size), so a stray digit is a one-line error, not a
# MemoryError an hour into a run.
MAXIMA = {"sample_rate": 384_000, "channels": 64, "block": 1 << 20, "block_s": 10.0, "buffer_s": 600.0,
          "stall_timeout": 3600.0, "open_timeout": 3600.0, "capture_delay": 60.0, "anchor_s": 60.0,
          "fps": 1000.0, "flip": 7, "seed": 2**32 - 1, "frames": 10**9, "latency": 10.0}
MAX_SIDE = 16384  # pixels, per side of a size option


class Options:
    """Typed access to a source's options; unknown or malformed options are user errors naming the URI."""

    def __init__(self, uri: str, options: dict, query_keys=frozenset()):
        self.uri = uri
        self._options = dict(options)
        self._query_keys = frozenset(query_keys)
        self._used: set[str] = set()

    def _raw(self, name):
        self._used.add(name)
        return self._options.get(name)

    def get_str(self, name: str, default: str | None = None) -> str | None:
        value = self._raw(name)
        return default if value is None else str(value)

    def get_float(self, name: str, default: float | None = None, minimum: float | None = None) -> float | None:
        return self._get_number(name, float, "a number", 1.0, default, minimum)

    def get_int(self, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
        return self._get_number(name, int, "an integer", 1, default, minimum)

    def _get_number(self, name: str, kind, what: str, example, default, minimum):
        value = self._raw(name)
        if value is None:
            return default
        try:
            out = kind(value)
        except (TypeError, ValueError):
            raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r} is not {what}; expected e.g. "
                              f"{name}={default if default is not None else example}.") from None
        problem = number_problem(out, minimum=minimum, maximum=MAXIMA.get(name))
        if problem:
            raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r}: {problem}.")
        return out

    def get_bool(self, name: str, default: bool | None = None) -> bool | None:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on", ""):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r} is not a boolean; expected true or false.")

    def get_size(self, name: str, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """'640x480' (or a (w, h) pair) -> (640, 480)."""
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, (tuple, list)) and len(value) == 2:
            w, h = value
        else:
            w, _, h = str(value).lower().partition("x")
        try:
            w, h = int(w), int(h)
        except (TypeError, ValueError):
            raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r} is not a size; "
                              f"expected WIDTHxHEIGHT, e.g. {name}=640x480.") from None
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r}: expected 1 to {MAX_SIDE} pixels a "
                              "side, e.g. 640x480.")
        return w, h

    def get_choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.get_str(name, default)
        if value is not None and value not in choices:
            raise EdgemmError(f"Source: {self.uri} | Option {name}={value!r} is not known; expected one of "
                              f"{', '.join(choices)}.")
        return value

    def check_all_used(self, kind: str) -> None:
        """Refuse options nobody read: a typo (``?sampel_rate=``) must not be silently ignored.

        Options typed in the URI must all be used by this kind of source. Keyword options come from code
        (the pipeline passes the same ones, e.g. ``realtime`` or ``name``, to every source): those only have
        to be options some source knows.
        """
        unknown = sorted(k for k, v in self._options.items() if v is not None and k not in self._used
                         and (k in self._query_keys or k not in KNOWN_OPTIONS))
        if unknown:
            known = ", ".join(sorted(self._used)) or "none"
            raise EdgemmError(f"Source: {self.uri} | Unknown option(s) {', '.join(unknown)} for a {kind} source; "
                              f"expected: {known}.")


# Every option any source reads (see edgemm/sources/__init__.py for what each one means).
KNOWN_OPTIONS = frozenset({
    "name", "realtime", "loop", "start_time", "stall_timeout", "open_timeout", "live",  # every source
    "size", "fps", "fourcc", "flip", "out_size", "resize", "transport", "frames", "pattern", "capture_delay",  # video
    "sample_rate", "block", "block_s", "buffer_s", "resample", "channels", "latency", "anchor_s",  # audio
    "kind", "freq", "freq_end", "period_s", "amplitude", "seed", "duration_s",  # audio test patterns
})
