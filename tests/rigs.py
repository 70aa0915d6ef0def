"""Real stand-ins for a camera and a microphone on a machine that has neither: the processes a camera or a
microphone would be to edgemm (a network stream, an audio server), started and stopped by the tests.

- ``FfmpegStream``: ffmpeg serving a live test-pattern stream over HTTP on loopback (MJPEG or MPEG-TS/H.264),
  one client per start (``-listen 1``). ``kill()`` is a real camera loss, ``start()`` again on the same port
  a real recovery.
- ``JackServer``: a JACK server with the dummy driver (no sound card), its own server name so parallel runs
  never meet, and ``add_tone()`` clients (``jack_metro``) that PortAudio lists as input devices.
- ``Mosquitto``: an MQTT broker on a free loopback port (optionally persisting sessions across restarts).

Every process is started by us and stopped by its pid (never by name), also when a test fails or its start
does: use them as context managers or pytest fixtures. ``require()`` skips a test with a clear reason when a
binary is missing -- unless ``EDGEMM_REQUIRE_RIGS=1`` (CI sets it), where a missing stand-in FAILS the test,
so a run cannot go green with the hardware stand-ins silently skipped.
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

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # daemons (mosquitto) live here, off a normal user's PATH


def rigs_required() -> bool:
    return os.environ.get("EDGEMM_REQUIRE_RIGS", "").strip() == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the calling test -- or fail it when EDGEMM_REQUIRE_RIGS=1: CI must not pass without its rigs."""
    if rigs_required():
        pytest.fail(f"{reason} (EDGEMM_REQUIRE_RIGS=1: the stand-ins for hardware must be installed)")
    pytest.skip(reason)


def which(binary: str) -> str | None:
    """The binary's path on PATH, or in the sbin folders."""
    return shutil.which(binary) or shutil.which(binary, path=os.pathsep.join(SBIN))


def require(*binaries: str) -> None:
    """Skip (or, with EDGEMM_REQUIRE_RIGS=1, fail) unless every binary is installed (tests/run.sh installs
    them: apt ffmpeg jackd2 mosquitto)."""
    missing = [b for b in binaries if which(b) is None]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (Debian: apt install ffmpeg jackd2 libportaudio2 mosquitto)")


def require_module(name: str, hint: str = ""):
    """Import a Python module a rig needs (sounddevice, paho-mqtt), or skip/fail as require() does."""
    import importlib

    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as exc:  # OSError: sounddevice without the PortAudio library
        skip_or_fail(f"needs {name} ({exc}){'; ' + hint if hint else ''}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LISTEN, ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp


def is_listening(port: int, states: tuple[str, ...] = (LISTEN,)) -> bool:
    """True when a local socket on 127.0.0.1:port is in one of ``states`` (default: listening), found in
    /proc/net/tcp without connecting: a probe connection would be the one client an ``-listen 1`` ffmpeg
    serves."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] in states and fields[1].endswith(suffix):
                    return True
    return False


def _wait_ready(proc: subprocess.Popen, ready, timeout: float, what: str, log) -> None:
    """Wait until ready() or fail; the process is killed when it does not get ready (never left behind)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log()}")
        if time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"{what} was not ready within {timeout} s: {log()}")
        time.sleep(0.02)


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


def _unniced() -> None:
    """An audio server runs ahead of ordinary work (realtime, or at least not niced): tests run under
    `nice -n 10`, and a dummy driver starved behind the other core's work ran its clock at 12.7 kHz of 16,
    which no real sound card does. Back to niceness 0 where allowed (root); else as it is."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


class _Rig:
    """What every stand-in shares: a log file of its process's output, and ``with rig:`` = start ... stop."""

    def __init__(self):
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self._log.close()


class FfmpegStream(_Rig):
    """A live camera: ffmpeg encodes its ``testsrc`` pattern (a frame counter is drawn in it) in real time
    (``-re``) and serves it at ``self.url`` to one client."""

    def __init__(self, kind: str = "mjpeg", size=(320, 240), fps: int = 30, port: int | None = None,
                 ready_states: tuple[str, ...] = (LISTEN,)):
        """ready_states: socket states that mean it is up; (LISTEN, ESTABLISHED) when a client that
        reconnects in a loop may already be the one client ffmpeg serves (its listening socket is then
        gone) before anyone looks."""
        assert kind in ("mjpeg", "mpegts")
        self.kind, self.size, self.fps = kind, size, fps
        self.ready_states = tuple(ready_states)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        super().__init__()

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
        _wait_ready(self.proc, lambda: is_listening(self.port, self.ready_states), timeout,
                    f"ffmpeg serving {self.url}", self.log)
        return self

    def kill(self) -> None:
        """Camera loss: SIGKILL, no goodbye to the client."""
        _kill(self.proc)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> FfmpegStream:
        self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        self.kill()


JACK_SLOTS = 6  # server names edgemm_rig0..5, reused (see JackServer)


class JackServer(_Rig):
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
        super().__init__()

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
                                stdout=self._log, stderr=self._log, preexec_fn=_unniced)

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
            stderr=self._log, preexec_fn=_unniced)  # a client of the audio server's cycle: not niced either
        self._wait_for(lambda: any(p.startswith(client + ":") for p in self.ports()), timeout, f"client {client}")
        return client

    def remove_client(self, client: str) -> None:
        _kill(self.clients.pop(client, None))  # jack_metro ignores SIGTERM

    def kill_server(self) -> None:
        """The audio server dies at once (SIGKILL), as when it crashes: its clients' streams are orphaned."""
        _kill(self.proc)

    def use_in_process(self) -> None:
        """Point this process's microphones at this server: edgemm captures in a child process
        (edgemm/sources/mic_worker.py), which inherits these variables and initialises PortAudio afresh."""
        self._saved_env = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER",
                                                         "JACK_NO_AUDIO_RESERVATION")}
        os.environ.update({k: self.env[k] for k in self._saved_env})

    def restart_server(self, timeout: float = 10.0) -> None:
        """Start the server again under the same name (after kill_server()); its clients are gone with it."""
        for client in list(self.clients):
            self.remove_client(client)
        _kill(self.proc)
        self.proc = self._spawn()
        self._wait_for(lambda: "system:capture_1" in self.ports(), timeout, "jackd to restart")

    def stop(self) -> None:
        """Clients, then the server, by pid (this process never holds a PortAudio stream: edgemm's capture
        processes do, and die with their pipeline)."""
        for client in list(self.clients):
            self.remove_client(client)
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


class Mosquitto(_Rig):
    """A mosquitto broker on a free loopback port, ours by pid. ``persist_dir``: keep sessions (a
    subscriber's subscription and the QoS 1 messages queued for it) across a restart, in that folder."""

    def __init__(self, conf_dir: Path, port: int | None = None, persist_dir: Path | None = None):
        self.binary = which("mosquitto")
        if self.binary is None:
            skip_or_fail("needs mosquitto (Debian: apt install mosquitto; it installs to /usr/sbin)")
        self.port = port or free_port()
        self.conf = Path(conf_dir) / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        if os.geteuid() == 0:
            # Started as root, mosquitto 2 switches to the user "mosquitto", who may not write (or even reach)
            # our folders: stay who we are.
            import pwd

            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if persist_dir is not None:
            Path(persist_dir).mkdir(parents=True, exist_ok=True)
            lines += ["persistence true", f"persistence_location {Path(persist_dir)}/"]
        else:
            lines += ["persistence false"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        super().__init__()

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        _wait_ready(self.proc, lambda: is_listening(self.port), timeout, f"mosquitto on port {self.port}", self.log)
        return self

    def stop(self) -> None:
        """SIGTERM (it saves its sessions when persistent), SIGKILL if it does not go."""
        _kill(self.proc, term_first=True)
        self.proc = None


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at path; None when mounted, else why not (no right to mount)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount") or "/bin/mount"
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True, timeout=10)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exited {proc.returncode}")


def unmount(path: Path) -> None:
    subprocess.run([shutil.which("umount") or "/bin/umount", "-l", str(path)], capture_output=True, timeout=10)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64k"):
    """A real, tiny filesystem at path (a tmpfs of `size`) to fill up: a full disk without filling the
    machine's. Needs the right to mount (root in CI's container); skipped, with the reason, where it is refused."""
    why = mount_tmpfs(path, size)
    if why:
        pytest.skip(f"cannot mount a {size} tmpfs for a full disk: {why}")
    try:
        yield path
    finally:
        unmount(path)
