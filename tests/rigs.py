"""Real stand-ins for a camera and a microphone on a machine that has neither (see shared/notes/test-rigs.md).

- ``FfmpegStream``: ffmpeg serving a live test-pattern stream over HTTP on loopback (MJPEG or MPEG-TS/H.264),
  one client per start (``-listen 1``). ``kill()`` is a real camera loss, ``start()`` again on the same port
  a real recovery.
- ``JackServer``: a JACK server with the dummy driver (no sound card), its own server name so parallel runs
  never meet, and ``add_tone()`` clients (``jack_metro``) that PortAudio lists as input devices.

Every process is started by us and stopped by its pid (never by name), also when a test fails: use them as
context managers or pytest fixtures. ``require()`` skips a test with a clear reason when a binary is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def require(*binaries: str) -> None:
    """Skip the calling test unless every binary is on PATH (tests/run.sh installs them: apt ffmpeg jackd2)."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (Debian: apt install ffmpeg jackd2 libportaudio2)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port, found in /proc/net/tcp without connecting: a probe
    connection would be the one client an ``-listen 1`` ffmpeg serves."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(suffix):  # 0A: LISTEN
                    return True
    return False


def _kill(proc: subprocess.Popen | None, term_first: bool = False, grace: float = 3.0) -> None:
    """Stop one process we started, by its pid, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    if term_first:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


class FfmpegStream:
    """A live camera: ffmpeg encodes its ``testsrc`` pattern (a frame counter is drawn in it) in real time
    (``-re``) and serves it at ``self.url`` to one client."""

    def __init__(self, kind: str = "mjpeg", size=(320, 240), fps: int = 30, port: int | None = None):
        assert kind in ("mjpeg", "mpegts")
        self.kind, self.size, self.fps = kind, size, fps
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def command(self) -> list[str]:
        w, h = self.size
        if self.kind == "mjpeg":
            enc = ["-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg"]
        else:
            enc = ["-c:v", "libx264", "-tune", "zerolatency", "-preset", "ultrafast", "-g", str(self.fps),
                   "-pix_fmt", "yuv420p", "-f", "mpegts"]
        return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
                "-i", f"testsrc=size={w}x{h}:rate={self.fps}", *enc, "-listen", "1", self.url]

    def start(self, timeout: float = 10.0) -> FfmpegStream:
        require("ffmpeg")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ffmpeg exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ffmpeg did not listen on {self.url} within {timeout} s: {self.log()}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """Camera loss: SIGKILL, no goodbye to the client."""
        _kill(self.proc)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> FfmpegStream:
        self.kill()
        return self.start(timeout)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        self._log.close()


JACK_SLOTS = 6  # server names edgemm_rig0..5, reused (see JackServer)


class JackServer:
    """``jackd --no-realtime -d dummy -r RATE -p PERIOD`` under a server name of its own.

    As root in a container JACK needs no realtime scheduling (``--no-realtime``) and no D-Bus device
    reservation (``JACK_NO_AUDIO_RESERVATION=1``); ``JACK_NO_START_SERVER=1`` stops libjack clients from
    spawning a server of their own. ``use_in_process()`` points this process's PortAudio at the server
    (PortAudio's JACK host API connects to it when PortAudio initialises, and lists every client with
    output ports as an input device).

    Names come from a small pool (``edgemm_rig0`` ...), each held with a file lock while its server runs, so
    parallel test processes never share one. Why not a fresh name each time: jackd2 keeps at most 8 servers
    in its shared-memory registry and only reclaims the entry of a dead server when a server of the SAME
    name starts; unique names would fill it after 8 killed servers ("Too many servers already active").
    """

    def __init__(self, rate: int = 16000, period: int = 256):
        self.rate, self.period = rate, period
        self.name: str | None = None
        self.env: dict = {}
        self.proc: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}
        self._saved_env: dict | None = None
        self._lock_file = None
        self._log = tempfile.TemporaryFile()

    def _claim_slot(self, slot: int) -> bool:
        lock = open(os.path.join(tempfile.gettempdir(), f"edgemm-jack-rig{slot}.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock_file = lock
        self.name = f"edgemm_rig{slot}"
        self.env = {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_START_SERVER": "1",
                    "JACK_NO_AUDIO_RESERVATION": "1"}
        return True

    def _release_slot(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(["jackd", "--no-realtime", "-n", self.name, "-d", "dummy", "-r", str(self.rate),
                                 "-p", str(self.period)], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=self._log, stderr=self._log)

    def start(self, timeout: float = 10.0) -> JackServer:
        require("jackd", "jack_metro", "jack_lsp")
        errors = []
        for slot in range(JACK_SLOTS):
            if not self._claim_slot(slot):
                continue
            self.proc = self._spawn()
            try:
                self._wait_for(lambda: "system:capture_1" in self.ports(), timeout, "jackd to start")
                return self
            except RuntimeError as exc:  # e.g. a stray server of that name from a crashed run: next slot
                errors.append(str(exc).splitlines()[-1])
                _kill(self.proc)
                self.proc = None
                self._release_slot()
        raise RuntimeError(f"no JACK server could be started in {JACK_SLOTS} slots: {errors} {self.log()}")

    def ports(self) -> list[str]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        out = subprocess.run(["jack_lsp", "-s", self.name], env=self.env, capture_output=True, text=True, timeout=10)
        return out.stdout.split() if out.returncode == 0 else []

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited while waiting for {what}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.log()}")
            time.sleep(0.05)

    def add_tone(self, client: str = "tone", freq: float = 440.0, amplitude: float = 0.5, bpm: int = 60,
                 duration_ms: int = 900, timeout: float = 10.0) -> str:
        """A microphone PortAudio calls ``client``: jack_metro beeps ``freq`` for ``duration_ms`` every beat
        (the beep must be shorter than the beat). Returns the device name."""
        self.clients[client] = subprocess.Popen(
            ["jack_metro", "-n", client, "-b", str(bpm), "-f", str(freq), "-A", str(amplitude),
             "-D", str(duration_ms)], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log)
        self._wait_for(lambda: any(p.startswith(client + ":") for p in self.ports()), timeout, f"client {client}")
        return client

    def remove_client(self, client: str) -> None:
        _kill(self.clients.pop(client, None))  # jack_metro ignores SIGTERM

    def kill_server(self) -> None:
        """The audio server dies at once (SIGKILL), as when it crashes: its clients' streams are orphaned."""
        _kill(self.proc)

    def use_in_process(self) -> None:
        """Point this process's PortAudio at this server and rescan devices."""
        from edgemm.sources.audio import refresh_devices

        self._saved_env = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER",
                                                         "JACK_NO_AUDIO_RESERVATION")}
        os.environ.update({k: self.env[k] for k in self._saved_env})
        if not refresh_devices():
            raise RuntimeError("a PortAudio stream is still open; cannot rescan devices")

    def stop(self) -> None:
        """Clients, then the server, by pid; PortAudio lets go of the server first (closing a JACK client
        after its server died aborts or hangs the process), and rescans afterwards."""
        for client in list(self.clients):
            self.remove_client(client)
        sd = _sounddevice_if_loaded()
        released = False
        if sd is not None and self._saved_env is not None:
            from edgemm.sources import audio

            with audio._lock:
                if audio._open_streams == 0 and sd._initialized:
                    sd._terminate()
                    released = True
        if self.proc is not None:
            _kill(self.proc, term_first=True)
            if self.proc.returncode == -signal.SIGKILL and self.name:
                # Killed, not stopped: its registry entry and shared memory stay behind until a server of the
                # same name starts. Start one briefly and stop it cleanly, so nothing is left in /dev/shm.
                self.proc = self._spawn()
                with contextlib.suppress(RuntimeError):
                    self._wait_for(lambda: "system:capture_1" in self.ports(), 5.0, "jackd (cleanup)")
                _kill(self.proc, term_first=True)
            self.proc = None
        if self.name:
            for path in glob.glob(f"/dev/shm/jack_{self.name}_*") + glob.glob(f"/dev/shm/jack_sem.*_{self.name}_*"):
                with contextlib.suppress(OSError):
                    os.remove(path)
        self._release_slot()
        if self._saved_env is not None:
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._saved_env = None
        if released:
            sd._initialize()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self._log.close()


def _sounddevice_if_loaded():
    import sys

    return sys.modules.get("sounddevice")
