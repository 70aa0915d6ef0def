"""Audio ring, clock drift and A/V alignment (edgemm/sync.py), on synthetic timestamps with known truth."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgemm.sources.base import AudioBlock, now
from edgemm.sync import AudioRing, DriftEstimator

SR = 16000


def _feed_clock(ring: AudioRing, seconds: float, ppm: float, block=256, t0=1000.0, delay=0.004, jitter=0.002, seed=0):
    """Blocks from a device whose crystal runs `ppm` fast: sample n is captured at t0 + n / (SR (1 + ppm)).
    The source stamps them by the nominal rate (t0 + n / SR); each block arrives after a delay plus noise."""
    rng = np.random.default_rng(seed)
    actual = SR * (1 + ppm * 1e-6)
    n = 0
    for _ in range(int(seconds * SR / block)):
        arrival = t0 + (n + block) / actual + delay + rng.exponential(jitter)
        ring.push(AudioBlock(np.zeros(block, np.float32), t0 + n / SR, SR, n, arrival))
        n += block
    return t0 + n / actual, t0 + n / SR  # true and nominal host time just past the last sample


@pytest.mark.parametrize("ppm", [80.0, -150.0, 0.0])
def test_drift_is_measured_and_corrected(ppm):
    ring = AudioRing(SR, capacity_s=5)
    true_end, nominal_end = _feed_clock(ring, 600, ppm)
    assert ring.ppm == pytest.approx(ppm, abs=3.0)
    # Ten minutes at this drift moves the nominal clock by up to 90 ms; the corrected map stays within 2 ms.
    assert abs(ring.latest_t() - true_end) < 0.002
    if ppm:
        assert abs(nominal_end - true_end) > 0.04
    # The window asked for by host time is the one captured then (within a couple of samples).
    w = ring.window(true_end - 1.0, SR)
    assert w.missing == 0
    assert abs(ring.index_at(true_end - 1.0) - (ring._end - (1.0 * SR * (1 + ppm * 1e-6)))) < 40


def test_drift_needs_enough_data_and_ignores_nonsense():
    est = DriftEstimator(SR, min_span_s=5.0)
    for k in range(100):  # 1.6 s of blocks: too little to fit
        est.add((k + 1) * 256, 10.0 + (k + 1) * 256 / SR)
    assert est.ppm is None
    # Arrivals not paced by the sample clock (a file read at full speed): the map keeps the sample count.
    ring = AudioRing(SR, capacity_s=5)
    t0 = 50.0
    for k in range(2000):
        ring.push(AudioBlock(np.zeros(256, np.float32), t0 + k * 256 / SR, SR, k * 256, t_arrival=t0 + k * 0.004))  # 4x real time
    assert abs(ring.ppm) > 1e5
    assert ring.time_of(2000 * 256) == pytest.approx(t0 + 2000 * 256 / SR)


def _ramp_ring(seconds=3.0, capacity_s=10.0, t0=100.0, block=320):
    """Sample n holds the value n (as float32, exact below 2**24), stamped by the sample count, no drift data."""
    ring = AudioRing(SR, capacity_s=capacity_s, correct_drift=False)
    n_total = int(seconds * SR)
    for first in range(0, n_total, block):
        x = np.arange(first, first + block, dtype=np.float32)
        ring.push(AudioBlock(x, t0 + first / SR, SR, first))
    return ring, t0, n_total


def test_window_ends_at_the_asked_instant_and_pads_what_is_missing():
    ring, t0, n = _ramp_ring()
    w = ring.window(t0 + 2.0, 8000)  # the half second before t0 + 2 s
    np.testing.assert_array_equal(w.samples, np.arange(32000 - 8000, 32000, dtype=np.float32))
    assert w.missing == 0 and w.t_end == pytest.approx(t0 + 2.0)
    # Ending 0.25 s in the future: the last 4000 samples have not arrived.
    w = ring.window(t0 + 3.25, 8000)
    assert w.missing == 4000
    np.testing.assert_array_equal(w.samples[:4000], np.arange(n - 4000, n, dtype=np.float32))
    assert not w.samples[4000:].any()
    # Starting before the first sample: zero-padded at the front.
    w = ring.window(t0 + 0.1, 3200)
    assert w.missing == 1600
    np.testing.assert_array_equal(w.samples[1600:], np.arange(0, 1600, dtype=np.float32))


def test_window_older_than_the_ring_is_missing():
    ring, t0, n = _ramp_ring(seconds=3.0, capacity_s=1.0)
    w = ring.window(t0 + 1.0, 1600)  # two seconds ago: overwritten
    assert w.missing == 1600 and not w.samples.any()
    w = ring.window(t0 + 3.0, 1600)
    assert w.missing == 0 and w.samples[-1] == n - 1


def test_gaps_after_an_overflow_are_zero_and_counted():
    ring = AudioRing(SR, correct_drift=False)
    ring.push(AudioBlock(np.ones(1600, np.float32), 10.0, SR, 0))
    ring.push(AudioBlock(np.ones(1600, np.float32), 10.0 + 3200 / SR, SR, 3200))  # 1600 samples lost
    assert ring.gap_samples == 1600
    w = ring.window(10.0 + 4800 / SR, 4800)
    assert w.missing == 1600
    assert w.samples[:1600].all() and not w.samples[1600:3200].any() and w.samples[3200:].all()


def test_a_source_that_placed_its_samples_afresh_after_a_stall_starts_a_new_epoch():
    """A microphone whose server froze re-anchors (sources/audio.py: _reanchor): its sample count goes on, but
    the next block is stamped 0.9 s later than the count says. The ring follows the stamps (a new epoch), so
    windows at the present are not "not yet arrived" for ever; blocks on the line never restart it."""
    ring = AudioRing(SR, correct_drift=False)
    for k in range(10):
        ring.push(AudioBlock(np.ones(1600, np.float32), 10.0 + k * 0.1, SR, k * 1600))
    assert ring.resets == 0  # stamped on the line: one epoch
    ring.push(AudioBlock(np.full(1600, 2.0, np.float32), 11.0 + 0.9, SR, 16000))
    assert ring.resets == 1
    assert abs(ring.latest_t() - 12.0) < 1e-6  # the stamp, not 11.1 from the count
    w = ring.window(12.0, 1600)
    assert w.missing == 0 and set(np.unique(w.samples)) == {2.0}


def test_a_reopened_source_starts_a_new_epoch():
    ring = AudioRing(SR, correct_drift=False)
    ring.push(AudioBlock(np.ones(16000, np.float32), 10.0, SR, 0))
    # The source was reopened 5 s later: its sample count restarts at 0.
    ring.push(AudioBlock(np.full(3200, 2.0, np.float32), 16.0, SR, 0))
    assert ring.resets == 1
    w = ring.window(16.2, 6400)
    assert w.missing == 3200 and set(np.unique(w.samples)) == {0.0, 2.0}


def test_blocks_at_another_rate_are_resampled_without_clicks():
    """A 48 kHz source feeding a 16 kHz model, in 10 ms blocks: the ring resamples as one stream, so the
    tone is continuous across block edges (resampling each block on its own clicked at every edge: peak
    error 0.16 on this 0.5 tone)."""
    ring = AudioRing(SR, correct_drift=False)
    rate, block, amp = 48000, 480, 0.5
    x = (amp * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    for first in range(0, rate, block):
        ring.push(AudioBlock(x[first:first + block], 5.0 + first / rate, rate, first))
    # Live, the filter's look-ahead (about 1 ms) waits for the next block ...
    assert 0 < 6.0 - ring.latest_t() < 0.002
    ring.mark_ended()  # ... and the end of the stream flushes it.
    assert ring.latest_t() == pytest.approx(6.0)
    w = ring.window(6.0, SR)
    assert w.missing == 0 and w.t_start == pytest.approx(5.0)
    ideal = amp * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    err = np.abs(w.samples - ideal)[100:-100]  # away from the start and the end of the signal
    assert err.max() < 1e-3, err.max()


def test_resampled_blocks_keep_their_gaps_and_their_times():
    """A 48 kHz source that loses 0.1 s (its sample index jumps): the gap stays a gap of the right length
    on the ring's grid, and the audio after it is where its timestamps say."""
    ring = AudioRing(SR, correct_drift=False)
    rate, block = 48000, 960
    x = np.full(rate, 0.25, np.float32)
    for first in list(range(0, rate // 2, block)) + list(range(rate // 2 + 4800, rate, block)):
        ring.push(AudioBlock(x[first:first + block], 10.0 + first / rate, rate, first))
    ring.mark_ended()
    assert ring.gap_samples == pytest.approx(1600, abs=40)  # 0.1 s at 16 kHz, less the filter's edges
    after = ring.window(10.0 + 0.9, 3200)  # 0.7 .. 0.9 s: well after the gap
    assert after.missing == 0 and np.allclose(after.samples, 0.25, atol=1e-3)
    gap = ring.window(10.0 + 0.59, 800)  # inside the lost 0.5 .. 0.6 s
    assert gap.missing == 800 and not gap.samples.any()


def test_align_bounds_the_skew_and_reports_it():
    ring, t0, n = _ramp_ring(seconds=2.0)
    end = t0 + n / SR
    # Audio there up to the frame: the window ends at the frame, no skew.
    w = ring.align(end - 0.1, 1600, max_skew_s=0.04)
    assert w.skew_s == pytest.approx(0.0) and w.missing == 0
    # Audio 20 ms behind the frame, bound 40 ms: the newest audio is used, skew 20 ms reported.
    w = ring.align(end + 0.02, 1600, max_skew_s=0.04)
    assert w.skew_s == pytest.approx(0.02, abs=1 / SR) and w.missing == 0 and w.samples[-1] == n - 1
    # Audio 100 ms behind: the window ends at the bound (skew 40 ms) and the 60 ms not there are zeros.
    w = ring.align(end + 0.1, 1600, max_skew_s=0.04)
    assert w.skew_s == pytest.approx(0.04, abs=1 / SR)
    assert w.missing == pytest.approx(0.06 * SR, abs=2)


def test_windows_on_a_hop_grid_stay_within_the_skew_bound_and_name_their_timeline():
    """grid > 1 (live audio with spectrogram inputs): windows end on whole hops, so successive windows share
    STFT columns; the end moves at most half a hop from an instant whose audio is there, never past the
    newest sample when the instant's audio has arrived, and never beyond the skew bound. ``first`` and
    ``epoch`` tell a feature stream where the window is and when the timeline changed."""
    hop = 160
    ring, t0, n = _ramp_ring(seconds=2.0)
    end = t0 + n / SR
    for k in range(40):  # frame instants at 30 fps, off the 10 ms grid, all with their audio there
        t = t0 + 0.5 + k / 30
        w = ring.align(t, 1600, max_skew_s=0.04, grid=hop)
        last = int(w.samples[-1]) + 1  # the ramp: sample n holds n
        assert last % hop == 0 and w.first == last - 1600 and abs(w.skew_s) <= hop / 2 / SR + 1e-9
        assert w.skew_s == pytest.approx(t - (t0 + last / SR))
    # Audio behind the frame: the grid point below the newest sample ...
    w = ring.align(end + 0.015, 1600, max_skew_s=0.04, grid=hop)
    assert w.missing == 0 and (w.first + 1600) % hop == 0 and w.first + 1600 <= n
    # ... unless that is beyond the bound: then the one above (its tail zero-padded, as without a grid).
    w = ring.align(end + 0.04 + 0.004, 1600, max_skew_s=0.04, grid=hop)
    assert (w.first + 1600) % hop == 0 and abs(w.skew_s) <= 0.04 and w.missing > 0
    epoch = w.epoch
    # A gap (samples the source lost) and a reopened source each start a new epoch.
    ring.push(AudioBlock(np.zeros(320, np.float32), t0 + (n + 800) / SR, SR, n + 800))
    assert ring.window(end, 1600, grid=hop).epoch != epoch
    epoch = ring.window(end, 1600, grid=hop).epoch
    ring.reset()
    ring.push(AudioBlock(np.zeros(3200, np.float32), end + 1.0, SR, 0))
    assert ring.window(end + 1.1, 1600, grid=hop).epoch != epoch


def test_align_waits_for_audio_that_is_about_to_arrive():
    ring = AudioRing(SR, correct_drift=False)
    t0 = now()
    ring.push(AudioBlock(np.ones(SR, np.float32), t0, SR, 0))
    frame_t = t0 + 1.0 + 0.01  # 10 ms past the audio we have

    def late_block():
        time.sleep(0.05)
        ring.push(AudioBlock(np.full(320, 2.0, np.float32), t0 + 1.0, SR, SR))

    th = threading.Thread(target=late_block)
    th.start()
    w = ring.align(frame_t, 1600, max_skew_s=0.0, wait_s=5.0)
    th.join()
    assert w.skew_s == 0.0 and w.missing == 0 and w.samples[-1] == 2.0
    assert 0.0 < w.waited_s < 5.0
