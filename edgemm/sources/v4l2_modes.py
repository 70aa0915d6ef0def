"""A V4L2 camera's modes, and the one to ask for so that frames come at about the model's size.

A UVC camera scales (or bins) on the sensor for free; a 640x480 or 1280x720 default mode makes the CPU
convert and shrink every frame. OpenCV cannot list a camera's modes, so they are read with the two ioctls
that do (VIDIOC_ENUM_FMT, VIDIOC_ENUM_FRAMESIZES) and the mode is then set through OpenCV as before
(CAP_PROP_FOURCC, CAP_PROP_FRAME_WIDTH/HEIGHT).

Only modes with the aspect ratio of the mode the camera opens in are candidates, so the picture's field of
view stays what it was and boxes map back to the default mode's pixels (``Frame.full_hw``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass

log = logging.getLogger("edgemm.sources")

_BUF_TYPE_VIDEO_CAPTURE = 1
_FRMSIZE_DISCRETE, _FRMSIZE_CONTINUOUS, _FRMSIZE_STEPWISE = 1, 2, 3
_FMTDESC = struct.Struct("=III32sII12x")  # index, type, flags, description, pixelformat, mbus_code, reserved
_FRMSIZE = struct.Struct("=III6I8x")  # index, pixel_format, type, union (discrete w, h | stepwise 6), reserved


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("V") << 8) | nr


VIDIOC_ENUM_FMT = _iowr(2, _FMTDESC.size)
VIDIOC_ENUM_FRAMESIZES = _iowr(74, _FRMSIZE.size)

# Cheapest to turn into BGR first: raw YUV (a conversion), then MJPEG (a JPEG decode per frame).
FOURCC_PREFERENCE = ("YUYV", "UYVY", "NV12", "YU12", "MJPG")


@dataclass(frozen=True)
class Mode:
    fourcc: str
    width: int
    height: int


def _fourcc(code: int) -> str:
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


def list_modes(device: str) -> list[Mode]:
    """Every (format, size) the device offers for capture; [] when it is not a V4L2 capture device.
    Stepwise ranges are given by their two ends (what choose_mode needs to know: the largest and the smallest)."""
    modes: list[Mode] = []
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return modes
    try:
        for i in range(64):
            buf = bytearray(_FMTDESC.pack(i, _BUF_TYPE_VIDEO_CAPTURE, 0, b"", 0, 0))
            try:
                fcntl.ioctl(fd, VIDIOC_ENUM_FMT, buf, True)
            except OSError:
                break
            pixelformat = _FMTDESC.unpack(buf)[4]
            for j in range(256):
                sbuf = bytearray(_FRMSIZE.pack(j, pixelformat, 0, 0, 0, 0, 0, 0, 0))
                try:
                    fcntl.ioctl(fd, VIDIOC_ENUM_FRAMESIZES, sbuf, True)
                except OSError:
                    break
                _, _, kind, a, b, c, d, e, _f = _FRMSIZE.unpack(sbuf)
                if kind == _FRMSIZE_DISCRETE:
                    modes.append(Mode(_fourcc(pixelformat), a, b))
                else:  # stepwise/continuous: min_w, max_w, step_w, min_h, max_h, step_h
                    modes += [Mode(_fourcc(pixelformat), a, d), Mode(_fourcc(pixelformat), b, e)]
                    break
    finally:
        os.close(fd)
    return modes


def choose_mode(modes: list[Mode], default_wh: tuple[int, int], need_wh: tuple[int, int],
                fourcc: str | None = None) -> Mode | None:
    """The smallest mode at least ``need_wh`` (width, height) with the aspect ratio of ``default_wh`` (the
    mode the camera opened in; within 1 %), of ``fourcc`` if given, else of the cheapest format to convert;
    None when no mode is smaller than the default one (nothing to gain) or none qualifies."""
    dw, dh = default_wh
    nw, nh = need_wh
    ok = [m for m in modes if m.width >= nw and m.height >= nh and abs(m.width * dh - m.height * dw) <= 0.01 * dw * m.height
          and (fourcc is None or m.fourcc == fourcc)]
    if not ok:
        return None
    area = min(m.width * m.height for m in ok)
    if area >= dw * dh:
        return None
    smallest = [m for m in ok if m.width * m.height == area]
    rank = {f: i for i, f in enumerate(FOURCC_PREFERENCE)}
    return min(smallest, key=lambda m: rank.get(m.fourcc, len(rank)))
