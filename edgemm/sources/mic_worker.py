"""The microphone's capture process: PortAudio runs here, in a child process of edgemm, never in edgemm itself.

Why a process: PortAudio cannot survive its audio server in-process. When a JACK server dies under an open
stream (measured with libportaudio2 19.6 and jackd2 1.9.21), ``Pa_AbortStream``/``Pa_CloseStream`` wait
10 minutes for a process callback that never comes, and ``Pa_Terminate`` -- the only way to re-initialise
PortAudio so that it sees the restarted server, and what sounddevice's exit handler calls -- fails an
assertion in ``pa_jack.c`` and aborts the whole process (SIGABRT), or hangs behind the stuck close. A child
process is re-initialised by starting a new one (it lists the devices afresh: a server or a USB microphone
that appeared later is found), closed by SIGKILL (nothing to wait for), and a wedged one never holds up
edgemm's exit.

    python .../edgemm/sources/mic_worker.py '{"uri": ..., "device": ..., "sample_rate": ..., "channels": ...,
                                             "latency": ..., "check": false}'

Run as a script, not as ``-m edgemm.sources.mic_worker``: that would import the ``edgemm.sources`` package
(OpenCV, numpy), a second or more on a small board before every reopening. It imports nothing of edgemm.

It writes framed messages to stdout (one kind byte, a little-endian u32 payload length, the payload):

- ``I`` JSON: the device opened (index, name, host API, default rate, stream latency); ``check`` stops here.
- ``E`` JSON ``{"message", "missing"}``: it could not (one line, in edgemm's style), then it exits.
- ``B`` a callback: ``BLOCK`` header (frames, ADC time, current time, arrival on CLOCK_MONOTONIC -- the
  parent's ``now()`` clock --, status flags) and the float32 samples, interleaved.
- ``F``: PortAudio finished the stream by itself.

It exits when stdin reaches end of file (the parent closed it, or died), without ``Pa_Terminate`` (see
above; the kernel and the audio server release the device of an exited process).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: its folder (edgemm/sources) must not shadow any module
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import json  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

BLOCK = struct.Struct("<IdddI")  # frames, inputBufferAdcTime, currentTime, arrival (monotonic), flags
FRAME = struct.Struct("<cI")  # kind, payload length
OVERFLOW = 1  # flags bit: status.input_overflow
SD_HINT = "pip install sounddevice; it needs the PortAudio library (Debian/Ubuntu: apt install libportaudio2)."

_write_lock = threading.Lock()


def send(kind: bytes, payload: bytes) -> None:
    data = FRAME.pack(kind, len(payload)) + payload
    with _write_lock:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
        except OSError:  # the parent is gone: nobody to capture for
            os._exit(0)


def send_json(kind: bytes, obj: dict) -> None:
    send(kind, json.dumps(obj).encode())


class Unavailable(Exception):
    """The device cannot be used now; ``missing``: it is not there at all (it may still appear)."""

    def __init__(self, message: str, missing: bool):
        super().__init__(message)
        self.missing = missing


def device_list_text(sd) -> str:
    devices = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
    if not devices:
        return "none (no input device is visible to PortAudio)"
    return ", ".join(f"[{d['index']}] '{d['name']}' ({sd.query_hostapis(d['hostapi'])['name']}, "
                     f"{d['default_samplerate']:g} Hz)" for d in devices)


def resolve(sd, uri: str, spec, sample_rate: int, channels: int) -> dict:
    """A device given as 'default', an index or (part of) a name -> its info, checked to capture ``channels``
    float32 channels at ``sample_rate``; else Unavailable listing the input devices."""
    try:
        if spec is None or str(spec).strip().lower() in ("", "default"):
            info = sd.query_devices(kind="input")  # PortAudio's default input; error if there is none
        elif str(spec).strip().lstrip("-").isdigit():
            info = sd.query_devices(int(str(spec).strip()))
            if info["max_input_channels"] < 1:
                raise ValueError(f"device {spec} has no input channels")
        else:
            info = sd.query_devices(str(spec).strip(), kind="input")  # substring match; error if 0 or 2+
    except (ValueError, sd.PortAudioError):
        raise Unavailable(f"Microphone: {uri} | No input device {spec!r}; expected 'default', an index or a name "
                          f"among: {device_list_text(sd)}.", missing=True) from None
    index = int(info["index"])
    try:
        sd.check_input_settings(device=index, samplerate=float(sample_rate), channels=channels, dtype="float32")
    except (ValueError, sd.PortAudioError) as exc:
        raise Unavailable(f"Microphone: {uri} | Device [{index}] '{info['name']}' cannot capture {channels} "
                          f"channel(s) at {sample_rate} Hz ({exc}); expected a rate it supports (its default is "
                          f"{info['default_samplerate']:g} Hz): set ?sample_rate= or choose a device that "
                          "resamples (e.g. ALSA 'default' or 'pulse').", missing=False) from None
    return {"index": index, "name": info["name"], "hostapi": sd.query_hostapis(info["hostapi"])["name"],
            "default_samplerate": info["default_samplerate"]}


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    uri = cfg["uri"]
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        send_json(b"E", {"message": f"Microphone: {uri} | sounddevice/PortAudio unavailable ({exc}); {SD_HINT}",
                         "missing": False})
        return 1
    rate, channels = int(cfg["sample_rate"]), int(cfg["channels"])
    try:
        info = resolve(sd, uri, cfg.get("device"), rate, channels)
    except Unavailable as exc:
        send_json(b"E", {"message": str(exc), "missing": exc.missing})
        return 1
    if cfg.get("check"):
        send_json(b"I", info)
        return 0

    def callback(indata, frames, time_info, status):
        arrival = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the parent's now()
        send(b"B", BLOCK.pack(frames, time_info.inputBufferAdcTime, time_info.currentTime, arrival,
                              OVERFLOW if status.input_overflow else 0) + bytes(indata))

    try:
        stream = sd.RawInputStream(device=info["index"], samplerate=rate, channels=channels, dtype="float32",
                                   latency=cfg.get("latency", 0.05), callback=callback,
                                   finished_callback=lambda: send(b"F", b""))
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        send_json(b"E", {"message": f"Microphone: {uri} | Could not start capture on [{info['index']}] "
                                    f"'{info['name']}' ({exc}); expected a working input device.", "missing": False})
        return 1
    info["latency"] = float(stream.latency) if stream.latency < 60 else None
    send_json(b"I", info)
    sys.stdin.buffer.read()  # until the parent closes stdin (or dies)
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BaseException:  # noqa: BLE001 - report it, then leave as below
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)  # never Pa_Terminate (sounddevice's exit handler): see the module's docstring
