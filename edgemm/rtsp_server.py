"""GStreamer's RTSP server fed with raw frames on stdin: the helper process behind ``--sink rtsp://``.

Run by the system's Python (``/usr/bin/python3``), not edgemm's: PyGObject and GstRtspServer come from the
distribution (Debian: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly}; JetPack
has them with nvv4l2h264enc) and a virtual environment cannot import them. It therefore imports nothing
from edgemm and only the standard library at import time.

    python3 rtsp_server.py --check
    python3 rtsp_server.py --host H --port P --path /PATH --width W --height H --fps F < frames

Frames are W*H*3 bytes of BGR each. They are pushed into every client's pipeline (one shared media) and
dropped when the encoder is behind (appsrc leaks the oldest, so a slow client never makes the stream lag).
H.264 by nvv4l2h264enc on Jetson, else x264enc. Prints ``READY PORT`` once the server listens and
``WATCHED N`` when the number of streaming pipelines changes (0 or 1: all clients share one); exits at the
end of stdin.
"""

from __future__ import annotations

import argparse
import sys
import threading


def _gst():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return GLib, Gst, GstRtspServer


def encoder(gst, fps: int) -> str:
    """The H.264 encoder part of the launch line: the Jetson hardware encoder where present."""
    if gst.ElementFactory.find("nvv4l2h264enc") is not None:
        # nvvidconv takes BGRx (not BGR) into NVMM memory for the hardware encoder.
        return (f"videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
                f"nvv4l2h264enc insert-sps-pps=true idrinterval={fps} maxperf-enable=true")
    if gst.ElementFactory.find("x264enc") is None:
        raise SystemExit("no H.264 encoder: expected nvv4l2h264enc (JetPack) or x264enc (gstreamer1.0-plugins-ugly)")
    return (f"videoconvert ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that GStreamer's RTSP server is importable")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--path", default="/live")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--fps", type=int, default=15)
    a = ap.parse_args(argv)
    try:
        GLib, Gst, GstRtspServer = _gst()
    except (ImportError, ValueError) as exc:
        print(f"GStreamer's RTSP server is not importable here ({exc})", file=sys.stderr)
        return 2
    if a.check:
        encoder(Gst, a.fps)
        return 0
    caps = f"video/x-raw,format=BGR,width={a.width},height={a.height},framerate={a.fps}/1"
    launch = (f"( appsrc name=src is-live=true do-timestamp=true format=time block=false leaky-type=downstream "
              f"max-buffers=2 caps={caps} ! {encoder(Gst, a.fps)} ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    srcs: list = []
    lock = threading.Lock()

    def watched(n: int) -> None:
        # Told to the sink, which sends frames only while someone watches.
        print(f"WATCHED {n}", flush=True)

    def on_configure(_factory, media):
        src = media.get_element().get_child_by_name("src")
        with lock:
            srcs.append(src)
            watched(len(srcs))

        def on_unprepared(_media):
            with lock:
                if src in srcs:
                    srcs.remove(src)
                watched(len(srcs))

        media.connect("unprepared", on_unprepared)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)  # one encoder for all clients
    factory.connect("media-configure", on_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address(a.host)
    server.set_service(str(a.port))
    server.get_mount_points().add_factory("/" + a.path.lstrip("/"), factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {a.host}:{a.port}", file=sys.stderr)
        return 3
    loop = GLib.MainLoop()
    size = a.width * a.height * 3

    def read_frames():
        stdin = sys.stdin.buffer
        while True:
            data = stdin.read(size)
            if len(data) < size:  # the sink closed the pipe: the run is over
                break
            with lock:
                targets = list(srcs)
            for src in targets:
                src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        GLib.idle_add(loop.quit)

    print(f"READY {server.get_bound_port()}", flush=True)
    threading.Thread(target=read_frames, daemon=True).start()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
