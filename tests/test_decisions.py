"""Decoding outputs by task, alert monitoring (smoothing, hysteresis, minimum duration), attribution numbers."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.bundle import OutputSpec
from edgemm.decisions import AlertMonitor, AlertRule, Decisions, Ema, attribution, decode_output, primary_output
from edgemm.errors import EdgemmError


def _cls(scores="logits", labels=("cat", "dog", "bird")):
    return OutputSpec("logits", "classification", shape=["N", len(labels)], labels=list(labels), scores=scores)


def test_classification_logits_become_probabilities():
    logits = np.array([[1.0, 3.0, 0.5]], np.float32)
    out = decode_output(logits, _cls())
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert out["label"] == "dog" and out["index"] == 1
    assert out["score"] == pytest.approx(p[1], abs=1e-6)
    assert [lbl for lbl, _ in out["top"]] == ["dog", "cat", "bird"]
    # Already probabilities: taken as they are.
    out = decode_output(np.array([[0.2, 0.3, 0.5]]), _cls("probabilities"))
    assert out["label"] == "bird" and out["score"] == pytest.approx(0.5)


def test_other_tasks_decode_by_kind():
    ml = OutputSpec("tags", "multilabel", labels=["a", "b", "c"])
    out = decode_output(np.array([[2.0, -2.0, 0.1]]), ml)
    assert out["labels"] == ["a", "c"] and out["scores"]["b"] == pytest.approx(1 / (1 + np.exp(2.0)), abs=1e-6)
    reg = decode_output(np.array([[0.25, -1.5]]), OutputSpec("y", "regression"))
    assert reg == {"values": [0.25, -1.5]}
    emb = decode_output(np.ones((1, 128), np.float32), OutputSpec("e", "embedding"))
    assert emb["shape"] == [1, 128] and emb["norm"] == pytest.approx(np.sqrt(128), rel=1e-6)
    assert primary_output({"e": OutputSpec("e", "embedding"), "logits": _cls()}) == "logits"


def test_ema_follows_time_not_sample_count():
    ema = Ema(tau_s=1.0)
    ema.update(0.0, 0.0)
    # One step of 1 s moves 1 - 1/e of the way; ten steps of 0.1 s get to the same place.
    one = ema.update(1.0, 1.0)
    ema2 = Ema(tau_s=1.0)
    ema2.update(0.0, 0.0)
    for k in range(1, 11):
        ten = ema2.update(k * 0.1, 1.0)
    assert one == pytest.approx(1 - np.exp(-1)) and ten == pytest.approx(one, rel=1e-9)


def _run(monitor: AlertMonitor, scores, dt=0.1):
    events = []
    for k, s in enumerate(scores):
        events += monitor.update(k * dt, s)
    return events


def test_alert_needs_the_minimum_duration():
    rule = AlertRule("dog", on=0.7, off=0.4, min_on_s=0.5, smoothing_s=0.0)
    # 0.3 s above the threshold: too short, no alert.
    assert _run(AlertMonitor(rule), [0.1] * 5 + [0.9] * 4 + [0.1] * 10) == []
    # 1 s above: one alert, starting when the score first crossed, confirmed 0.5 s later.
    events = _run(AlertMonitor(rule), [0.1] * 5 + [0.9] * 11 + [0.1] * 5)
    assert [e["event"] for e in events] == ["alert_start", "alert_end"]
    start, end = events
    assert start["t"] == pytest.approx(0.5) and start["t_confirmed"] == pytest.approx(1.0)
    assert end["t"] == pytest.approx(1.6) and end["duration_s"] == pytest.approx(1.1)


def test_hysteresis_keeps_an_alert_through_scores_between_off_and_on():
    rule = AlertRule("dog", on=0.7, off=0.4, min_on_s=0.0, smoothing_s=0.0)
    events = _run(AlertMonitor(rule), [0.8, 0.6, 0.5, 0.45, 0.65, 0.5, 0.3])
    assert [e["event"] for e in events] == ["alert_start", "alert_end"]
    assert events[1]["t"] == pytest.approx(0.6)
    # Without hysteresis (off == on) the same scores flap.
    flappy = _run(AlertMonitor(AlertRule("dog", on=0.7, off=0.7, min_on_s=0.0, smoothing_s=0.0)),
                  [0.8, 0.6, 0.8, 0.6, 0.8, 0.6])
    assert len(flappy) == 6


def test_smoothing_ignores_a_one_frame_spike():
    spike = [0.1] * 10 + [1.0] + [0.1] * 10
    assert _run(AlertMonitor(AlertRule("dog", on=0.7, off=0.4, min_on_s=0.0, smoothing_s=0.5)), spike) == []
    assert len(_run(AlertMonitor(AlertRule("dog", on=0.7, off=0.4, min_on_s=0.0, smoothing_s=0.0)), spike)) == 2


def test_alert_open_at_shutdown_is_closed():
    m = AlertMonitor(AlertRule("dog", on=0.5, off=0.4, min_on_s=0.0, smoothing_s=0.0))
    assert _run(m, [0.9, 0.9])[0]["event"] == "alert_start"
    end = m.close(3.0)
    assert end[0]["event"] == "alert_end" and end[0]["reason"] == "shutdown"
    assert m.close(4.0) == []


def test_alert_rules_parse_and_check_labels():
    r = AlertRule.parse("dog:0.8:0.6:1.5")
    assert (r.label, r.on, r.off, r.min_on_s) == ("dog", 0.8, 0.6, 1.5)
    assert AlertRule.parse("dog:0.3").off == 0.3  # off defaults to min(on, 0.4)
    for bad in ("dog:x", ":0.5", "dog:0.5:0.6", "dog:1:2:3:4"):
        with pytest.raises(EdgemmError):
            AlertRule.parse(bad)
    with pytest.raises(EdgemmError, match="not one of the output's labels"):
        Decisions({"logits": _cls()}, [AlertRule("horse")])
    d = Decisions({"logits": _cls()}, [AlertRule("2", on=0.5, off=0.5, min_on_s=0, smoothing_s=0)])  # by index
    assert d.alerts(0.0, {"logits": np.array([[0.0, 0.0, 5.0]])})[0]["label"] == "2"
    assert d.active_alerts() == ["2"]


def test_attribution_is_the_score_lost_without_each_modality():
    specs = {"logits": _cls("probabilities")}
    full = {"logits": np.array([[0.1, 0.7, 0.2]])}
    without = {"video": {"logits": np.array([[0.3, 0.4, 0.3]])}, "audio": {"logits": np.array([[0.2, 0.65, 0.15]])}}
    a = attribution(full, without, specs)
    assert a["label"] == "dog" and a["score"] == pytest.approx(0.7)
    assert a["video"] == pytest.approx(0.3) and a["audio"] == pytest.approx(0.05)
    # The only modality present carries the whole score.
    assert attribution(full, {"audio": None}, specs)["audio"] == pytest.approx(0.7)


def test_alert_rules_from_a_config_file_check_their_types():
    rule = AlertRule.from_dict({"label": "drowsy", "on": 0.7, "off": 0.5, "min_on_s": 1})
    assert (rule.label, rule.on, rule.off, rule.min_on_s) == ("drowsy", 0.7, 0.5, 1)
    assert AlertRule.from_dict({"label": 3}).label == 3
    for bad in ({"label": "a", "on": "high"}, {"label": "a", "smoothing_s": None}, {"label": ["a"]},
                {"label": "a", "on": True}, {"label": "a", "output": 5}):
        with pytest.raises(EdgemmError) as info:
            AlertRule.from_dict(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("n", [2, 10, 64, 65, 1000])
@pytest.mark.parametrize("scores", ["logits", "probabilities"])
def test_classification_decoding_agrees_with_the_scores_on_both_paths(n, scores):
    """Up to 64 classes the decoding runs in plain Python (the inference thread's hot path), above it in
    numpy: both must give the label, index, score and top 3 that scores_of's probabilities give, ties to the
    lower index."""
    from edgemm.decisions import scores_of

    spec = OutputSpec(name="p", task="classification", scores=scores, labels=[f"c{i}" for i in range(n)])
    rng = np.random.default_rng(n)
    for k in range(50):
        v = (rng.standard_normal((1, n)) * rng.uniform(0.1, 20)).astype(np.float32)
        if k == 0:
            v[0, : min(3, n)] = v[0].max()  # a tie at the top
        if scores == "probabilities":
            v = np.abs(v) / np.abs(v).sum()
        q = scores_of(v, spec)
        order = np.argsort(-q, kind="stable")[:3]
        expected = {"label": f"c{order[0]}", "index": int(order[0]), "score": round(float(q[order[0]]), 6),
                    "top": [[f"c{i}", round(float(q[i]), 6)] for i in order]}
        assert decode_output(v, spec) == expected
