"""Short versions of the soak's faults (benchmarks/soak.py): each fault once, for a few seconds, on the real
stand-ins (ffmpeg camera, JACK dummy server and tone client, mosquitto, a tmpfs), against `edgemm run` as a
process. The run must notice the fault, recover within 5 s of its end, and lose nothing already written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import rigs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402

pytestmark = pytest.mark.slow

FAULT_S, SETTLE_S, WARM_S = 3.0, 6.0, 5.0


@pytest.mark.parametrize("fault", [
    "camera", "broker", "disk_full", "sigkill", "mic_client", "audio_server",
])
def test_soak_fault_is_noticed_and_recovered_from(fault, tmp_path):
    rigs.require("ffmpeg", "jackd", "jack_metro", "jack_lsp", "mosquitto")
    rigs.require_module("paho.mqtt.client", "pip install paho-mqtt")
    rigs.require_module("sounddevice", "pip install sounddevice; apt install libportaudio2")
    r = soak.run_soak((WARM_S + FAULT_S + SETTLE_S + 1) / 60, cycle=(), final=(fault,), fault_s=FAULT_S,
                      settle_s=SETTLE_S, warm_s=WARM_S, work=tmp_path, quiet=True)
    if r["disk_note"] and fault == "disk_full":
        pytest.skip(f"no tmpfs for a full disk: {r['disk_note']}")
    (f,) = r["faults"]
    assert f["noticed"], f
    # A restarted process imports Python, OpenCV and ONNX Runtime and opens the model and both sources
    # first: 2 s on an idle machine, up to ~8 s with the other core busy (the soak reports the figure).
    goal = 15.0 if fault == "sigkill" else soak.RECOVERY_GOAL_S
    assert f["recovery_s"] is not None and f["recovery_s"] <= goal, f
    assert f["written_before_lost"] == 0 and r["sinks"]["jsonl"]["unparsable_lines"] == 0, f
    assert r["unplanned"] == [] and r["exit_s_after_sigterm"] < 5.0, r["unplanned"]
    # Results in capture order in the file and over MQTT; MQTT's own sequence unbroken (duplicates allowed).
    mqtt = r["sinks"]["mqtt"]
    assert r["sinks"]["jsonl"]["order_breaks"] == 0 and mqtt["order_breaks"] == 0, mqtt["out_of_order"]
    assert mqtt["messages_out_of_seq"] == 0 and mqtt["seq_gaps"] == 0, mqtt
    if fault == "broker":  # store and forward: nothing lost within the buffer's bound
        assert f["mqtt_missing_in_window"] == 0 and r["sinks"]["mqtt"]["results_missing"] == 0, r["sinks"]
    if fault == "disk_full":  # what could not be written is counted by the sink as lost
        counted = r["sinks"]["jsonl"]["counted_by_edgemm"]
        assert counted["lost"] == r["sinks"]["jsonl"]["results_missing"] > 0, r["sinks"]
