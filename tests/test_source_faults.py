"""Sources that fail for real under `edgemm run` (issue 15): the audio server SIGKILLed and restarted or left
dead, a microphone's JACK client that vanishes (fed as digital silence), a camera stream that appears only
after the run started or never. The stand-ins are real processes (jackd with the dummy driver, jack_metro,
ffmpeg); edgemm runs as a user runs it, in a subprocess, its results and events read from its JSONL file.

Times are asserted against the goals of the issue (recovery within 5 s of a server's return, every exit
within 5 s of SIGTERM) and hold with the other core busy: each is measured from the moment the test acts,
on CLOCK_MONOTONIC, the clock of the events' "t" as well.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import onnx_models, rigs
from tests.conftest import REPO

SR = 16000
EXIT_S = 5.0  # every exit path ends within this long after SIGTERM
RECOVER_S = 5.0  # a source is back within this long after its device or server is


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return onnx_models.write_av_bundle(tmp_path_factory.mktemp("faults") / "av")


@pytest.fixture
def jack():
    rigs.require_module("sounddevice", "pip install sounddevice; apt install libportaudio2")
    rigs.require("jackd", "jack_metro", "jack_lsp")
    with rigs.JackServer(rate=SR, period=256) as server:
        server.add_tone("tone", freq=440.0)
        yield server


class EdgemmRun:
    """`edgemm run ARGS --sink jsonl:OUT` in a subprocess; its records read back as they are written."""

    def __init__(self, tmp_path: Path, *args, env: dict | None = None, name: str = "out"):
        self.out = tmp_path / f"{name}.jsonl"
        self.proc = subprocess.Popen([sys.executable, "-m", "edgemm", *(["-v"] if os.environ.get("EDGEMM_TEST_VERBOSE") else []), "run", *map(str, args), "--sink",
                                      f"jsonl:{self.out}", "-q"], cwd=REPO, env={**os.environ, **(env or {})},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr = ""
        self.early_stderr = ""

    def records(self) -> list[dict]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def events(self, kind: str, modality: str | None = None, after: float = float("-inf")) -> list[dict]:
        """Events of a kind (and modality) that happened after ``after`` (CLOCK_MONOTONIC, as their "t"): a
        loaded machine may also lose and recover a source at start, before its first blocks."""
        return [r for r in self.records() if r.get("type") == "event" and r["event"] == kind
                and (modality is None or r.get("modality") == modality) and r["t"] > after]

    def results(self) -> list[dict]:
        return [r for r in self.records() if r.get("type") == "result"]

    def wait_for(self, cond, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            if self.proc.poll() is not None:
                self.stderr = self.proc.stderr.read()
                pytest.fail(f"edgemm exited ({self.proc.returncode}) while waiting for {what}: {self.stderr[-2000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {what} within {timeout} s; stderr so far: {self._stderr_now()}")

    def _stderr_now(self) -> str:
        self.stop(signal.SIGKILL)
        return self.stderr[-2000:]

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send sig; (exit code, seconds it took to exit)."""
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.stderr = self.proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            rigs._kill(self.proc)
            self.stderr = self.proc.communicate()[1]
            return -999, timeout
        return self.proc.returncode, time.monotonic() - t

    def kill(self) -> None:
        rigs._kill(self.proc)
        self.proc.communicate()


def wait_for_line(run: EdgemmRun, text: str, timeout: float = 60.0) -> None:
    """Read edgemm's stderr until a line has text (kept in run.early_stderr)."""
    deadline = time.monotonic() + timeout
    while True:
        line = run.proc.stderr.readline()
        run.early_stderr += line
        if text in line:
            return
        assert line and time.monotonic() < deadline, f"edgemm never said {text!r}: {run.early_stderr[-2000:]}"


def clean_audio(run: EdgemmRun, after: int = 0) -> int:
    return sum("audio" not in r["degraded"] for r in run.results()[after:])


def test_audio_server_killed_and_restarted_comes_back_and_every_exit_is_quick(tmp_path, bundle, jack):
    """jackd SIGKILLed under the running microphone, restarted 3 s later with its client: audio is lost, then
    back in the same process within RECOVER_S of the client's return (a fresh PortAudio, as each capture
    process is). SIGTERM then ends the run within EXIT_S, exit 0, summary written. Then again with the server
    left dead: SIGTERM still ends it within EXIT_S (PortAudio's close used to wait forever)."""
    run = EdgemmRun(tmp_path, bundle, "--video", "test://video?size=160x120&fps=15", "--audio", "mic://tone",
                    env=jack.env)
    try:
        run.wait_for(lambda: clean_audio(run) >= 10, 60, "10 results with audio")
        t_kill = time.monotonic()
        jack.kill_server()
        run.wait_for(lambda: run.events("source_lost", "audio", t_kill), 15, "source_lost for audio")
        time.sleep(3.0)
        jack.restart_server()
        jack.add_tone("tone", freq=440.0)
        t_back = time.monotonic()
        back = run.wait_for(lambda: run.events("source_recovered", "audio", t_kill), 30, "source_recovered for audio")
        recovered_s = back[0]["t"] - t_back
        n_back = len(run.results())
        run.wait_for(lambda: clean_audio(run, n_back) >= 5, 15, "results with audio after the recovery")
        code, exit_s = run.stop()
    finally:
        run.kill()
    print(f"recovered {recovered_s:.2f} s after the server and its client were back; SIGTERM exit {exit_s:.2f} s")
    assert recovered_s < RECOVER_S, recovered_s
    assert code == 0 and exit_s < EXIT_S, (code, exit_s, run.stderr[-2000:])
    assert run.records()[-1]["type"] == "summary"

    # The server left dead: exit on SIGTERM all the same.
    run = EdgemmRun(tmp_path, bundle, "--video", "test://video?size=160x120&fps=15", "--audio", "mic://tone",
                    env=jack.env, name="dead")
    try:
        run.wait_for(lambda: clean_audio(run) >= 5, 60, "results with audio")
        t_kill = time.monotonic()
        jack.kill_server()
        run.wait_for(lambda: run.events("source_lost", "audio", t_kill), 15, "source_lost for audio")
        time.sleep(1.0)  # reopening attempts fail meanwhile
        code, exit_s = run.stop()
    finally:
        run.kill()
    print(f"server left dead: SIGTERM exit {exit_s:.2f} s")
    assert code == 0 and exit_s < EXIT_S, (code, exit_s, run.stderr[-2000:])
    assert run.records()[-1]["type"] == "summary"


def test_a_source_lost_too_long_exits_1_for_the_supervisor(tmp_path, bundle, jack):
    """--max-source-loss: the audio server stays dead, so the run ends by itself with one line and exit 1
    (systemd's Restart=on-failure then starts a fresh process), with its results and summary flushed."""
    run = EdgemmRun(tmp_path, bundle, "--video", "test://video?size=160x120&fps=15", "--audio", "mic://tone",
                    "--max-source-loss", "3", env=jack.env)
    try:
        run.wait_for(lambda: clean_audio(run) >= 5, 60, "results with audio")
        t_kill = time.monotonic()
        jack.kill_server()
        lost = run.wait_for(lambda: run.events("source_lost", "audio", t_kill), 15, "source_lost for audio")
        t_lost = lost[0]["t"]
        run.proc.wait(30)
        t_exit = time.monotonic()
        code, _ = run.stop()
    finally:
        run.kill()
    lines = run.stderr.strip().splitlines()
    print(f"max-source-loss 3 s: exit {t_exit - t_lost:.2f} s after source_lost")
    assert code == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[-1].startswith("edgemm run: error: Audio source: mic://tone | Lost for") and "--max-source-loss 3" in lines[-1]
    assert 3.0 <= t_exit - t_lost < 3.0 + EXIT_S, t_exit - t_lost
    assert run.records()[-1]["type"] == "summary"


def test_a_vanished_microphone_client_is_lost_until_its_signal_returns(tmp_path, bundle, jack):
    """The microphone's JACK client goes away: PortAudio feeds the stream exact zeros, which no microphone
    makes. After silence_s that is source_lost (reason: digital silence) and audio is degraded; when the
    client is back, the signal returns (the stream is reopened onto it) and with it source_recovered."""
    run = EdgemmRun(tmp_path, bundle, "--video", "test://video?size=160x120&fps=15", "--audio",
                    "mic://tone?silence_s=1", env=jack.env)
    try:
        run.wait_for(lambda: clean_audio(run) >= 10, 60, "10 results with audio")
        t_gone = time.monotonic()
        jack.remove_client("tone")
        lost = run.wait_for(lambda: run.events("source_lost", "audio", t_gone), 15, "source_lost for audio")
        n_lost = len(run.results())
        run.wait_for(lambda: sum(r["degraded"] == ["audio"] for r in run.results()[n_lost:]) >= 10, 15,
                     "results degraded for audio")
        time.sleep(1.0)
        assert not run.events("source_recovered", "audio", t_gone)  # silence is not a recovery, however long
        jack.add_tone("tone", freq=440.0)
        t_back = time.monotonic()
        back = run.wait_for(lambda: run.events("source_recovered", "audio", t_gone), 30, "source_recovered for audio")
        n_back = len(run.results())
        run.wait_for(lambda: clean_audio(run, n_back) >= 5, 15, "results with audio again")
        code, exit_s = run.stop()
    finally:
        run.kill()
    print(f"vanished client: lost {lost[0]['t'] - t_gone:.2f} s after it went (silence_s 1), recovered "
          f"{back[0]['t'] - t_back:.2f} s after it was back; SIGTERM exit {exit_s:.2f} s")
    assert "Digital silence" in lost[0]["reason"] and "exact zeros" in lost[0]["reason"]
    assert back[0]["t"] - t_back < RECOVER_S, back[0]["t"] - t_back
    assert code == 0 and exit_s < EXIT_S


def test_a_camera_that_appears_late_is_waited_for(tmp_path, bundle):
    """--wait-for-sources: the camera's stream starts 3 s after edgemm: a source_waiting event, then
    source_opened, and the run goes on with video."""
    port = rigs.free_port()
    run = EdgemmRun(tmp_path, bundle, "--video", f"http://127.0.0.1:{port}/", "--audio", "test://audio",
                    "--wait-for-sources", "60")
    cam = rigs.FfmpegStream("mjpeg", size=(160, 120), fps=15, port=port, ready_states=(rigs.LISTEN, rigs.ESTABLISHED))
    try:
        wait_for_line(run, "is not available yet; waiting up to 60 s")  # it is up, and tried in vain
        time.sleep(2.0)
        assert run.proc.poll() is None and not run.out.exists()  # sinks (and so the events) open after sources
        cam.start()
        t_cam = time.monotonic()
        run.wait_for(lambda: sum("video" not in r["degraded"] for r in run.results()) >= 10, 60,
                     "10 results with video")
        code, exit_s = run.stop()
    finally:
        run.kill()
        cam.stop()
    waiting, opened = run.events("source_waiting", "video"), run.events("source_opened", "video")
    print(f"late camera: opened {opened[0]['t'] - t_cam:.2f} s after its stream started; SIGTERM exit {exit_s:.2f} s"
          if opened else "late camera: never opened")
    assert len(waiting) == 1 and len(opened) == 1, (waiting, opened)
    # The reason is the opener's own one-line error (OpenCV's or the scaling ffmpeg decoder's), naming the URI
    assert f"127.0.0.1:{port}" in waiting[0]["reason"] and opened[0]["waited_s"] >= 2.5
    assert code == 0 and exit_s < EXIT_S


def test_a_camera_that_never_appears_fails_after_the_wait_with_one_line(tmp_path, bundle):
    """--wait-for-sources 3 and no stream ever: one line on stderr, exit 1, after about 3 s of waiting, and no
    results file left behind (sinks open only after the sources)."""
    port = rigs.free_port()
    t = time.monotonic()
    run = EdgemmRun(tmp_path, bundle, "--video", f"http://127.0.0.1:{port}/", "--audio", "test://audio",
                    "--wait-for-sources", "3")
    try:
        code = run.proc.wait(60)
        took = time.monotonic() - t
        run.stderr = run.proc.stderr.read()
    finally:
        run.kill()
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("edgemm run: error:")]
    print(f"camera never there, --wait-for-sources 3: exit 1 after {took:.2f} s (from the command's start)")
    assert code == 1 and "Traceback" not in run.stderr and len(errors) == 1, run.stderr[-2000:]
    assert f"http://127.0.0.1:{port}/" in errors[0] and "waited 3 s for it: --wait-for-sources" in errors[0]
    assert took >= 3.0
    assert not run.out.exists()


def test_stopping_while_waiting_for_a_source_is_quick_and_clean(tmp_path, bundle):
    """SIGTERM while waiting for a camera: exit 0 within EXIT_S, nothing written."""
    port = rigs.free_port()
    run = EdgemmRun(tmp_path, bundle, "--video", f"http://127.0.0.1:{port}/", "--audio", "test://audio",
                    "--wait-for-sources", "600")
    try:
        wait_for_line(run, "waiting up to 600 s")
        code, exit_s = run.stop()
    finally:
        run.kill()
    print(f"SIGTERM while waiting for a source: exit {exit_s:.2f} s")
    assert code == 0 and exit_s < EXIT_S, (code, exit_s, run.stderr)
    assert not run.out.exists()


def test_a_microphone_that_appears_late_is_made_when_it_is_there(tmp_path, bundle, jack):
    """--wait-for-sources with a microphone PortAudio does not list yet (its JACK client starts later): the
    device check that would fail at once is made at every try instead (LateSource), then audio runs."""
    jack.remove_client("tone")
    run = EdgemmRun(tmp_path, bundle, "--video", "test://video?size=160x120&fps=15", "--audio", "mic://late",
                    "--wait-for-sources", "60", env=jack.env)
    try:
        wait_for_line(run, "audio source mic://late is not available yet; waiting up to 60 s")
        jack.add_tone("late", freq=440.0)
        t_mic = time.monotonic()
        run.wait_for(lambda: clean_audio(run) >= 5, 60, "results with audio")
        code, exit_s = run.stop()
    finally:
        run.kill()
    waiting, opened = run.events("source_waiting", "audio"), run.events("source_opened", "audio")
    print(f"late microphone: opened {opened[0]['t'] - t_mic:.2f} s after its client started" if opened else "")
    assert len(waiting) == 1 and "No input device 'late'" in waiting[0]["reason"] and len(opened) == 1
    assert code == 0 and exit_s < EXIT_S
