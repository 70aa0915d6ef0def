"""Models with recurrent state (a VAD's LSTM h/c, a keyword spotter's GRU): INT8 judged on streams.

A stateful graph's state inputs (manifest ``state_of``: h <- hn) carry, while streaming, what the graph gave
on the previous chunk; the rest of the conversion feeds zeros, as at start-up. Zeros alone calibrate the
ranges of a state the model never holds after its first chunk (an accumulating state can grow tenfold) and
judge INT8 on the first chunk of a stream only, where nothing has drifted yet. So here a data folder is read
as streams of consecutive chunks, as `edgemm run` feeds a file:

  a WAV file    the whole file, cut into the audio input's windows every hop (manifest ``preprocess.hop``,
                else back to back), each preprocessed as the runtime does;
  a .npz file   its samples (the batch rows) in order are consecutive chunks of one stream;
  anything else one chunk per sample (video: the data folder's frames).

``CarriedFeeds`` gives the calibration feeds with each stateful graph's state inputs holding what the float
graph gave on the previous chunk of the same stream (every stream starts from zeros). ``check_streams`` runs
the float and the converted graphs side by side over the streams, each carrying its OWN state (errors that
accumulate show), and measures per output the cosine over the whole sequence and the largest difference,
and for the primary output the share of chunks whose decision agrees with FP32 (argmax for class scores,
0.5 for a probability). INT8 far from FP32 there is refused in one line that names the state.
``floor_closeness`` hands convert's closeness floor (--min-cosine) those stream figures for the outputs of a
stateful graph, its state outputs left out (internal: their error shows in what they drive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from edgemm.bundle import Bundle, GraphSpec
from edgemm.converters.calibration import GraphFeeds, graph_order
from edgemm.converters.data import DataFolder, Sample, decision_graph, primary_output
from edgemm.converters.graphs import cpu_session
from edgemm.converters.validate import cosine_from_sums
from edgemm.errors import EdgemmError
from edgemm.media import read_wav
from edgemm.preprocess import preprocess_audio, resample

# The closeness a stream must keep to FP32 (its primary output, over every chunk of every stream): the
# cosine of the whole output sequence, and the share of chunks deciding the same (a 32 ms VAD frame shifted
# at each edge of speech costs a few percent; more is another detector).
MIN_STREAM_COSINE = 0.99
MIN_DECISION_AGREEMENT = 0.97
STREAM_CHECK_CHUNKS = 4000  # chunks the check runs at most, unless the user's limit says otherwise


def state_pairs(spec: GraphSpec) -> dict[str, str]:
    """State input -> the output that carries it to the next call."""
    return {s.name: s.state_of for s in spec.inputs if s.modality == "state" and s.state_of}


def stateful_graphs(bundle: Bundle) -> dict[str, dict[str, str]]:
    """Graph -> its state pairs, for the graphs that carry state."""
    out = {g: state_pairs(spec) for g, spec in bundle.manifest.graphs.items()}
    return {g: p for g, p in out.items() if p}


def describe_states(bundle: Bundle) -> str:
    """"h <- hn, c <- cn" (graph-qualified when the bundle has several graphs)."""
    pairs = stateful_graphs(bundle)
    many = len(bundle.manifest.graphs) > 1
    return ", ".join(f"{g + '.' if many else ''}{i} <- {o}" for g, p in pairs.items() for i, o in p.items())


# --------------------------------------------------------------------------------------------------
# The data folder as streams of consecutive chunks
# --------------------------------------------------------------------------------------------------


def iter_streams(folder: DataFolder) -> Iterator[Iterator[Sample]]:
    """One iterator of consecutive chunk samples (batch 1) per file of the folder."""
    audio = [s for s in folder.inputs.values() if s.modality == "audio"]
    whole_wavs = folder.media and len(folder.inputs) == 1 and len(audio) == 1
    if whole_wavs:
        for stem, files in folder.media.items():
            if "audio" not in files:
                raise EdgemmError(f"{folder.what}: {folder.folder / stem} | No WAV file for input {audio[0].name}.")
            yield _wav_chunks(files["audio"], audio[0])
        return
    for sample in folder.samples():
        yield (Sample({k: v[i:i + 1] for k, v in sample.tensors.items()}, {}, f"{sample.name}[{i}]")
               for i in range(sample.batch))


def _wav_chunks(path, spec) -> Iterator[Sample]:
    """The whole WAV cut into the input's windows every hop, as `edgemm run` ticks through a file."""
    wav, rate = read_wav(path)
    pre = spec.preprocess
    if rate != pre.sample_rate:
        wav = resample(wav, rate, pre.sample_rate)
    window = pre.window_samples
    hop = pre.hop or window
    starts = range(0, max(wav.size - window, 0) + 1, hop)
    for i, start in enumerate(starts):
        yield Sample({spec.name: preprocess_audio(wav[start:start + window], spec)}, {}, f"{path.name}@{i}")


class _FloatStates:
    """The float graphs that carry state, run chunk by chunk to know the state each chunk starts from."""

    def __init__(self, models: Mapping[str, object], pairs: dict[str, dict[str, str]], threads, what: str):
        self.pairs = pairs
        self.sessions = {g: cpu_session(models[g], threads, what=f"{what} (graph {g})") for g in pairs}
        self.names = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def run(self, g: str, feed: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.names[g], self.sessions[g].run(None, feed)))


class CarriedFeeds:
    """Calibration feeds (graph -> feed per chunk, at most ``limit`` chunks) over the folder's streams, the
    state inputs of stateful graphs holding what the float graph gave on the previous chunk. The same
    interface as GraphFeeds (``iter_feeds``, a context manager), so convert uses either."""

    def __init__(self, bundle: Bundle, folder, limit: int | None = None, what: str = "Calibration data",
                 threads: int | None = None):
        self.feeds = GraphFeeds(bundle, folder, limit=None, what=what, progress=False, threads=threads)
        self.limit = limit
        self.pairs = stateful_graphs(bundle)
        self.graphs = graph_order(bundle)
        self.float = _FloatStates({g: bundle.load_graph(g) for g in self.pairs}, self.pairs, threads,
                                  str(bundle.source or bundle.root))
        self.chunks = 0
        self.streams = 0

    def iter_feeds(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        for stream in iter_streams(self.feeds.data):
            self.streams += 1
            states: dict[str, dict[str, np.ndarray]] = {g: {} for g in self.pairs}
            for sample in stream:
                feeds = self.feeds.feeds_for(sample, self.graphs)
                for g, pairs in self.pairs.items():
                    feeds[g].update(states[g])
                    outs = self.float.run(g, feeds[g])
                    states[g] = {i: outs[o] for i, o in pairs.items()}
                yield feeds
                self.chunks += 1
                if self.limit is not None and self.chunks >= self.limit:
                    return
        if self.chunks == 0:
            raise EdgemmError(f"{self.feeds.what}: {self.feeds.data.source} | Holds no samples; expected at least one.")

    def close(self) -> None:
        self.feeds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def calibration_feeds(bundle: Bundle, folder, limit: int | None, threads: int | None):
    """CarriedFeeds for a bundle with a stateful graph, else plain GraphFeeds (each sample from zeros)."""
    if stateful_graphs(bundle):
        return CarriedFeeds(bundle, folder, limit, threads=threads)
    return GraphFeeds(bundle, folder, limit=limit, threads=threads)


# --------------------------------------------------------------------------------------------------
# Closeness over streams, each model carrying its own state
# --------------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    dot: float = 0.0
    ref2: float = 0.0
    cand2: float = 0.0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    n: int = 0
    ref_min: float = np.inf
    ref_max: float = -np.inf
    agree: int = 0
    chunks: int = 0
    argmax: bool = False
    decides: bool = True

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        r, c = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        self.dot += float(r @ c)
        self.ref2 += float(r @ r)
        self.cand2 += float(c @ c)
        d = np.abs(r - c)
        self.max_abs = max(self.max_abs, float(d.max(initial=0)))
        self.sum_abs += float(d.sum())
        self.n += d.size
        self.ref_min, self.ref_max = min(self.ref_min, float(r.min())), max(self.ref_max, float(r.max()))
        self.chunks += 1
        if self.argmax:
            self.agree += int(np.argmax(r) == np.argmax(c))
        else:
            self.agree += int(np.all((r > 0.5) == (c > 0.5)))

    def cosine(self) -> float:
        return cosine_from_sums(self.dot, self.ref2, self.cand2)

    def result(self) -> dict:
        d = {"chunks": self.chunks, "cosine": self.cosine(), "max_abs": self.max_abs,
             "mean_abs": self.sum_abs / max(self.n, 1)}
        if not self.decides:
            return d
        if self.argmax:
            d["decision"], d["decision_agreement"] = "argmax", self.agree / max(self.chunks, 1)
        elif 0.0 <= self.ref_min and self.ref_max <= 1.0:  # a probability: speech / no speech at 0.5
            d["decision"], d["decision_agreement"] = "> 0.5", self.agree / max(self.chunks, 1)
        return d


def stream_closeness(bundle: Bundle, reference: Mapping[str, object], candidate: Mapping[str, object], folder,
                     limit: int | None = None, threads: int | None = None, what: str = "Calibration data") -> dict:
    """Per stateful graph and output: the reference and candidate graphs over the folder's streams, each with
    its own state carried from chunk to chunk (the other inputs as the float bundle feeds them)."""
    pairs = stateful_graphs(bundle)
    limit = limit or STREAM_CHECK_CHUNKS
    where = str(bundle.source or bundle.root)
    ref = _FloatStates(reference, pairs, threads, where)
    cand = _FloatStates(candidate, pairs, threads, f"{where}, converted")
    specs = {g: {o.name: o for o in bundle.manifest.graphs[g].outputs} for g in pairs}
    acc = {g: {o: _Acc(argmax=s.task == "classification" and len(s.shape) == 2 and (s.shape[1] or 0) > 1,
                       decides=o not in pairs[g].values())  # a state is no decision, whatever its shape
               for o, s in specs[g].items()} for g in pairs}
    chunks = streams = 0
    with GraphFeeds(bundle, folder, limit=None, what=what, progress=False, threads=threads) as gf:
        for stream in iter_streams(gf.data):
            streams += 1
            states = {g: ({}, {}) for g in pairs}
            for sample in stream:
                feeds = gf.feeds_for(sample, graph_order(bundle))
                for g, p in pairs.items():
                    r_out = ref.run(g, {**feeds[g], **states[g][0]})
                    c_out = cand.run(g, {**feeds[g], **states[g][1]})
                    states[g] = ({i: r_out[o] for i, o in p.items()}, {i: c_out[o] for i, o in p.items()})
                    for o, a in acc[g].items():
                        a.add(r_out[o], c_out[o])
                chunks += 1
                if chunks >= limit:
                    break
            if chunks >= limit:
                break
    return {"graphs": {g: {o: a.result() for o, a in outs.items()} for g, outs in acc.items()},
            "states": describe_states(bundle), "state_outputs": sorted(o for p in pairs.values() for o in p.values()),
            "streams": streams, "chunks": chunks,
            "how": "float and converted graphs side by side over each file's consecutive chunks, each carrying "
                   "its own state from zeros; cosine over the whole output sequence"}


def _verdict_output(bundle: Bundle, result: dict) -> tuple[str, str, dict]:
    """(graph, output, its figures) the verdict reads: the primary output where a stateful graph gives it,
    else the stateful graphs' least close non-state output."""
    primary, dg = primary_output(bundle), decision_graph(bundle)
    graphs = result["graphs"]
    state_outs = {o for p in stateful_graphs(bundle).values() for o in p.values()}
    if dg in graphs and primary in graphs[dg] and primary not in state_outs:
        return dg, primary, graphs[dg][primary]
    cands = [(g, o, d) for g, outs in graphs.items() for o, d in outs.items() if o not in state_outs] or \
        [(g, o, d) for g, outs in graphs.items() for o, d in outs.items()]
    return min(cands, key=lambda t: t[2]["cosine"])


def check_streams(bundle: Bundle, reference: Mapping[str, object], candidate: Mapping[str, object], folder,
                  limit: int | None, threads: int | None, precision: str = "INT8",
                  what: str = "Calibration data") -> dict:
    """stream_closeness and its verdict; raises EdgemmError (one line naming the state and what to do)
    when the primary output is far from FP32 over the streams. Returns the record for the report."""
    result = stream_closeness(bundle, reference, candidate, folder, limit, threads, what)
    g, out, d = _verdict_output(bundle, result)
    agreement = d.get("decision_agreement")
    far = d["cosine"] < MIN_STREAM_COSINE or (agreement is not None and agreement < MIN_DECISION_AGREEMENT)
    result["verdict"] = {"graph": g, "output": out, "min_cosine": MIN_STREAM_COSINE,
                         "min_decision_agreement": MIN_DECISION_AGREEMENT, "close": not far}
    if far:
        agree = (f", decisions ({d['decision']}) agree on {agreement:.1%} of {d['chunks']} chunks "
                 f"(expected >= {MIN_DECISION_AGREEMENT:.0%})") if agreement is not None else ""
        raise EdgemmError(f"{precision}: {bundle.source or bundle.root} | Far from FP32 over {result['streams']} "
                          f"stream(s) with its recurrent state carried ({result['states']}): output {out} cosine "
                          f"{d['cosine']:.3f} (expected >= {MIN_STREAM_COSINE}){agree}, max abs "
                          f"{d['max_abs']:.3g}; keep this model in FP32 (--precision fp32) or try --precision fp16.")
    return result


def floor_closeness(close: Mapping[str, dict], streams: dict | None) -> dict[str, dict]:
    """The closeness a floor (convert's --min-cosine) judges a stateful model by. Its state outputs are left
    out: a state is internal, and its error shows in the outputs it drives over a stream. Its other outputs
    count by their closeness over the streams (the cosine of the whole sequence, each model carrying its own
    state), not on single windows started from zeros, which no stream ever holds past its first chunk (Silero
    v6: hn 0.967 there, the probability 0.999 over the streams)."""
    if not streams:
        return dict(close)
    state_outs = set(streams.get("state_outputs", ()))
    out = {n: e for n, e in close.items() if n not in state_outs}
    for outs in streams["graphs"].values():
        for n, d in outs.items():
            if n not in state_outs:
                out[n] = {"samples": d["chunks"], "cosine": d["cosine"], "cosine_all": d["cosine"],
                          "max_abs": d["max_abs"], "how": "over streams, state carried"}
    return out


def data_for_check(opts) -> tuple[object, int | None, str]:
    """The folder the stream check reads (--eval, else --calib), its limit and its name in messages."""
    if opts.eval is not None:
        return opts.eval, opts.eval_limit, "Evaluation data"
    return opts.calib, opts.calib_limit, "Calibration data"
