"""Power and energy from tegrastats (edgemm/power.py) and their place in `edgemm bench`.

The parser runs on real tegrastats lines of every Jetson generation (captured on devices, as published in
the Datadog agent's and jetson-stats' test suites and in user reports). The sampler runs a real process
that replays real tegrastats lines at tegrastats' pace: the stand-in for the board's power monitor.
"""

from __future__ import annotations

import sys
import textwrap
import time

import numpy as np
import onnx
import pytest

from edgemm import bench, power
from edgemm.errors import EdgemmError
from edgemm.power import PowerSample, PowerSampler, energy_j, parse_tegrastats
from edgemm.runners.onnxruntime import OnnxRuntimeRunner
from tests import onnx_models

# (generation, real line, expected total mW, where the total comes from)
LINES = [
    ("JetPack 4, Nano", "RAM 534/3964MB (lfb 98x4MB) SWAP 5/1982MB (cached 1MB) IRAM 0/252kB(lfb 252kB) CPU "
     "[16%@204,9%@204,0%@204,0%@204] EMC_FREQ 0%@204 GR3D_FREQ 0%@76 APE 25 PLL@34C CPU@36.5C PMIC@100C GPU@36C "
     "AO@39.5C thermal@36.25C POM_5V_IN 1022/1022 POM_5V_GPU 0/0 POM_5V_CPU 204/204", 1022, "POM_5V_IN"),
    ("JetPack 4, TX1", "RAM 1179/3983MB (lfb 120x4MB) IRAM 0/252kB(lfb 252kB) CPU [1%@102,4%@102,0%@102,0%@102] "
     "EMC_FREQ 7%@408 GR3D_FREQ 0%@76 APE 25 AO@42.5C CPU@37.5C GPU@39C PLL@37C Tdiode@42.75C PMIC@100C "
     "Tboard@42C thermal@38.5C VDD_IN 2532/2698 VDD_CPU 76/178 VDD_GPU 19/19", 2532, "VDD_IN"),
    ("JetPack 4, TX2", "RAM 1004/7852MB (lfb 7x2MB) CPU [0%@350,4%@345,2%@499,1%@341,1%@349,0%@345] EMC_FREQ "
     "17%@40 GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% PLL@34C MCPU@34C PMIC@100C Tboard@28C GPU@32C BCPU@34C "
     "thermal@33.2C Tdiode@30.5C VDD_SYS_GPU 153/153 VDD_SYS_SOC 383/383 VDD_4V0_WIFI 0/0 VDD_IN 1876/1876 "
     "VDD_SYS_CPU 229/229 VDD_SYS_DDR 134/134", 1876, "VDD_IN"),
    ("JetPack 4, AGX Xavier", "RAM 721/31927MB (lfb 7291x4MB) SWAP 0/15963MB (cached 0MB) CPU "
     "[2%@1190,0%@1190,0%@1190,0%@1190,off,off,off,off] EMC_FREQ 0%@665 GR3D_FREQ 0%@318 APE 150 MTS fg 0% bg 0% "
     "AO@37.5C GPU@37.5C Tdiode@40C PMIC@100C AUX@36C CPU@37.5C thermal@36.9C Tboard@37C GPU 0/0 CPU 311/311 "
     "SOC 932/932 CV 0/0 VDDRQ 621/621 SYS5V 1482/1482", 0 + 311 + 932 + 0 + 621 + 1482, "sum of 6 rails"),
    ("JetPack 4, Xavier NX", "RAM 4412/7772MB (lfb 237x4MB) SWAP 139/3886MB (cached 2MB) CPU "
     "[9%@1190,6%@1190,6%@1190,5%@1190,4%@1190,8%@1267] EMC_FREQ 10%@1600 GR3D_FREQ 62%@306 APE 150 MTS fg 0% "
     "bg 0% AO@41.5C GPU@43C PMIC@100C AUX@41.5C CPU@43.5C thermal@42.55C VDD_IN 4067/4067 VDD_CPU_GPU_CV 738/738 "
     "VDD_SOC 1353/1353", 4067, "VDD_IN"),
    ("JetPack 5, Orin NX", "RAM 6334/15388MB (lfb 1770x4MB) SWAP 491/7694MB (cached 0MB) CPU "
     "[6%@729,9%@729,5%@729,16%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@611 VIC_FREQ 729 APE 174 "
     "CV0@45.812C CPU@47.937C SOC2@46.093C SOC0@46.968C CV1@46.406C GPU@45.875C tj@48.875C SOC1@48.875C "
     "CV2@45.75C VDD_IN 5299mW/5299mW VDD_CPU_GPU_CV 773mW/773mW VDD_SOC 1424mW/1424mW", 5299, "VDD_IN"),
    ("JetPack 6, Orin Nano", "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) "
     "CPU [1%@1420,2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C "
     "gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW",
     4824, "VDD_IN"),
    ("JetPack 6, AGX Orin", "RAM 29114/30697MB (lfb 3x4MB)    SWAP 4915/15348MB (cached 1MB) CPU "
     "[3%@729,4%@729,0%@729,1%@729,0%@2201,100%@2201,1%@2201,0%@2201,100%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ "
     "1%@2133 GR3D_FREQ 0%@[305,305] NVENC      off  NVDEC    off NVJPG off NVJPG1    off         VIC        off "
     "         OFA           off          NVDLA0    off       NVDLA1     off          PVA0_FREQ off         APE  "
     "         174        cpu@53.062C soc2@48.25C soc0@48.843C  gpu@47.812C tj@53.062C soc1@48.968C    "
     "VDD_GPU_SOC 3205mW/3205mW VDD_CPU_CV 4405mW/4405mW VIN_SYS_5V0 4767mW/4767mW", 3205 + 4405 + 4767,
     "sum of 3 rails"),
    ("JetPack 7.2, AGX Orin", "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU "
     "[23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] "
     "EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off "
     "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C "
     "gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW "
     "VIN_SYS_5V0 5500mW/5500mW/5500mW", 5139 + 3268 + 5500, "sum of 3 rails"),
    ("JetPack 7, Thor", "07-31-2026 14:45:55 RAM 86905/125772MB (lfb 368x4MB) CPU [12%@972,10%@972,off,33%@1890] "
     "cpu@39.812C tj@39.906C soc012@38.812C gpu@39.906C soc345@38.625C VDD_GPU 3561mW/3561mW "
     "VDD_CPU_SOC_MSS 7910mW/7910mW VIN_SYS_5V0 7620mW/7620mW VIN 26686mW/26686mW", 26686, "VIN"),
]


@pytest.mark.parametrize("generation,line,total,source", LINES, ids=[g for g, *_ in LINES])
def test_real_tegrastats_lines_of_every_generation(generation, line, total, source):
    s = parse_tegrastats(line, t=1.0)
    assert s is not None
    assert s.total_mw == total and s.total_from == source
    # Memory, clocks and engine loads are never taken for rails.
    assert not {"RAM", "SWAP", "IRAM", "APE", "EMC_FREQ", "GR3D_FREQ", "VIC_FREQ", "MTS"} & set(s.rails)


def test_rail_values_are_the_current_reading_not_the_average():
    s = parse_tegrastats(LINES[1][1])
    assert s.rails == {"VDD_IN": 2532.0, "VDD_CPU": 76.0, "VDD_GPU": 19.0}  # "VDD_CPU 76/178": 76 now, 178 average


def test_lines_without_rails_are_not_samples():
    assert parse_tegrastats("RAM 2448/62840MB (lfb 2x4MB) SWAP 0/31420MB (cached 0MB) GR3D_FREQ 0% cpu@42C") is None
    assert parse_tegrastats("") is None


def test_energy_is_the_integral_of_the_power_curve():
    flat = [PowerSample(t, 5000.0) for t in (0.0, 1.0, 2.0, 3.0)]
    assert energy_j(flat, 0.5, 2.5) == pytest.approx(10.0)  # 5 W for 2 s
    ramp = [PowerSample(0.0, 0.0), PowerSample(2.0, 4000.0)]
    assert energy_j(ramp, 0.0, 2.0) == pytest.approx(4.0)  # mean 2 W for 2 s
    assert energy_j(ramp, 1.0, 2.0) == pytest.approx(3.0)  # from 2 W to 4 W over 1 s
    assert energy_j(ramp, 2.0, 4.0) == pytest.approx(8.0)  # held at the last reading after it
    assert energy_j(ramp, 1.0, 1.0) == 0.0 and energy_j([], 0.0, 1.0) == 0.0


def _replay(tmp_path, lines: list[str], interval_s: float = 0.05):
    """A real process printing real tegrastats lines at tegrastats' pace, forever (like tegrastats)."""
    script = tmp_path / "replay.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        lines = {lines!r}
        i = 0
        while True:
            print(lines[min(i, len(lines) - 1)], flush=True)
            i += 1
            time.sleep({interval_s})
    """))
    return [sys.executable, str(script)]


def test_sampler_measures_idle_and_a_window_from_a_live_process(tmp_path):
    line = LINES[6][1]  # Orin Nano, VDD_IN 4824 mW
    with PowerSampler(interval_ms=50, idle_s=0.3, command=_replay(tmp_path, [line])) as p:
        assert p.idle_w == pytest.approx(4.824)
        t0 = time.perf_counter()
        time.sleep(0.3)
        w = p.window(t0, time.perf_counter())
    assert w["mean_w"] == pytest.approx(4.824) and w["rail"] == "VDD_IN" and w["samples"] >= 2
    assert w["rails_mean_w"]["VDD_SOC"] == pytest.approx(1.475)
    assert p._proc.poll() is not None, "stop() ends the process"


def test_power_levels_change_is_seen_between_their_extremes(tmp_path):
    low, high = LINES[5][1], LINES[5][1].replace("VDD_IN 5299mW/5299mW", "VDD_IN 9000mW/6000mW")
    with PowerSampler(interval_ms=40, idle_s=0.2, command=_replay(tmp_path, [low] * 8 + [high], 0.04)) as p:
        time.sleep(0.4)
        w = p.window(p.samples[0].t, time.perf_counter())
    assert 5.299 < w["mean_w"] < 9.0
    assert p.idle_w == pytest.approx(5.299)


def test_bench_reports_power_and_energy_per_inference(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(model))
    line = LINES[6][1]
    target = bench.Target("mlp", OnnxRuntimeRunner(model, threads=1), make_feed=lambda r: {"x": np.ones((1, 8), np.float32)})
    with PowerSampler(interval_ms=50, idle_s=0.2, command=_replay(tmp_path, [line])) as p:
        (res,) = bench.run([target], duration_s=0.5, warmup_s=0.05, power=p)
    pw = res["power"]
    assert pw["mean_w"] == pytest.approx(4.824) and pw["rail"] == "VDD_IN" and pw["samples"] >= 2
    assert pw["energy_per_inference_mj"] == pytest.approx(4.824 * res["latency_ms"]["mean"])
    assert pw["dynamic_energy_per_inference_mj"] == pytest.approx(0.0, abs=1e-9)  # same power as idle
    assert "mlp power: 4.82 W (VDD_IN)" in bench.format_table([res])


def test_no_power_source_off_a_jetson(cli, av_onnx):
    if power.available():
        pytest.skip("this machine has tegrastats/jtop")
    assert not power.is_jetson()
    with pytest.raises(EdgemmError, match=r"Power \| No power source here"):
        PowerSampler().start()
    r = cli("bench", av_onnx, "--iterations", "2", "--power", "on")
    assert r.returncode == 1 and r.stderr.strip().startswith("edgemm bench: error: Power | No power source here")
    r = cli("bench", av_onnx, "--iterations", "2")  # auto: quietly no power line off a Jetson
    assert r.returncode == 0 and "power:" not in r.stdout


def test_energy_over_many_irregular_samples_matches_a_fine_integration():
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.uniform(0.01, 0.2, 3000))
    mw = rng.uniform(1000, 9000, ts.size)
    samples = [PowerSample(float(t), float(m)) for t, m in zip(ts, mw)]
    rng.shuffle(samples)  # any order
    t0, t1 = float(ts[10] + 0.003), float(ts[-20] - 0.001)
    grid = np.linspace(t0, t1, 2_000_001)  # the piecewise-linear curve on a fine grid
    power_w = np.interp(grid, ts, mw) / 1e3
    reference = float(np.sum((power_w[1:] + power_w[:-1]) / 2 * np.diff(grid)))
    assert energy_j(samples, t0, t1) == pytest.approx(reference, rel=1e-5)


def test_stop_lets_the_reader_finish_before_closing_its_pipe(tmp_path):
    """The reader thread ends at the pipe's end; closing the pipe under it made it fail (ValueError)."""
    import threading

    errors = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(3):
            sampler = PowerSampler(interval_ms=10, idle_s=0, command=_replay(tmp_path, [LINES[0][1]], 0.01))
            sampler.start()
            time.sleep(0.2)
            sampler.stop()
            assert not sampler._thread.is_alive() and sampler._proc.stdout.closed and sampler.samples
    finally:
        threading.excepthook = previous
    assert errors == []
