"""Early, intermediate and late fusion over runners, driven by the bundle's manifest.

``FusionModel`` runs a whole bundle. Its pieces are exposed separately because the live pipeline
calls them at different times (encoders at their own rates, the head on the freshest embeddings):

  early:        ``run_graph(model, tensors, present)``: one graph takes every modality.
  intermediate: ``encode(modality, tensors)`` -> embeddings; ``fuse(embeddings, present)`` -> outputs.
  late:         ``member(modality, tensors)`` -> outputs; ``combine(member_outputs)`` -> outputs.
  any form:     ``infer(tensors, present)`` composes the above for one sample (offline evaluation).

A missing modality (``present[m] = False``) is handled the way each form allows: early fusion zeroes the
modality's tensors, intermediate fusion zeroes its embeddings, late fusion leaves its member out of the
decision. Inputs of modality "presence" receive 1/0 flags, so models trained with modality dropout know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from edgemm.bundle import Bundle, GraphSpec, OutputSpec
from edgemm.errors import EdgemmError
from edgemm.feeds import concrete_shape, constant_value, refused_feed
from edgemm.runners import make_runner
from edgemm.runners.base import BaseRunner, TensorMeta

SENSORS = ("video", "audio")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def graph_feed(spec: GraphSpec, meta: Mapping[str, TensorMeta], tensors: Mapping[str, np.ndarray],
               present: Mapping[str, bool] | None = None, encoder_modality: Mapping[str, str] | None = None,
               where: str = "Feed", states: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The feed of one graph from a sample's tensors, keyed by input name or "graph.output" (embeddings).

    Presence inputs get 1 or 0 from ``present`` (default: every modality present), constant inputs their
    manifest ``value``, and recurrent states the value carried in ``states`` (input name -> array), else
    zeros, as at start-up. An input of a missing modality, a sensor input or the embedding of that
    modality's encoder (``encoder_modality``: encoder graph -> modality), is zeros.
    """
    present = present or {}
    encoder_modality = encoder_modality or {}
    batch = next((v.shape[0] for v in tensors.values() if getattr(v, "ndim", 0) > 0), 1)
    feed = {}
    for s in spec.inputs:
        m = meta[s.name]
        if s.value is not None:
            feed[s.name] = constant_value(s, concrete_shape(m, s, batch))
        elif s.modality == "presence":
            feed[s.name] = np.full(concrete_shape(m, s, batch), 1.0 if present.get(s.presence_of, True) else 0.0,
                                   dtype=m.dtype)
        elif s.modality == "state":
            carried = (states or {}).get(s.name)
            feed[s.name] = carried if carried is not None else np.zeros(concrete_shape(m, s, batch), dtype=m.dtype)
        else:
            key = s.source if s.modality == "embedding" and s.source else s.name
            modality = s.modality if s.modality in SENSORS else encoder_modality.get(key.split(".", 1)[0])
            if modality is not None and not present.get(modality, True):
                shape = tensors[key].shape if key in tensors else concrete_shape(m, s, batch)
                feed[s.name] = np.zeros(shape, dtype=m.dtype)
            elif key in tensors:
                feed[s.name] = tensors[key]
            else:
                raise EdgemmError(f"{where} | No tensor for input {s.name} of graph {spec.name}"
                                  f"{f' (from {key})' if key != s.name else ''}; expected it in the feed.")
    return feed


@dataclass
class FusionResult:
    outputs: dict[str, np.ndarray]  # the decision outputs (task outputs of the model / head / fused members)
    degraded: list[str] = field(default_factory=list)  # modalities that were missing
    per_modality: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # late: each member's outputs
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # intermediate: "graph.output" -> embedding


class FusionModel:
    """Runs a bundle of any fusion form. Use as a context manager (activates every runner)."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", threads: int | None = None):
        self.bundle = bundle
        self.manifest = m = bundle.manifest
        self.form = m.fusion.form
        self.runners = {g: make_runner(bundle, g, backend, threads) for g in m.graphs}
        # encoder graph -> its modality: a head's embedding input is missing when that modality is
        self._encoder_modality = {g: mod for mod, g in m.fusion.encoders.items()}
        if self.form == "early":
            self.decision_graph = bundle.single_graph
        elif self.form == "intermediate":
            self.decision_graph = m.fusion.head
        else:
            self.decision_graph = next(iter(m.fusion.members.values()))
            self._check_members()
        self.output_specs = self._output_specs()
        # Recurrent state carried from call to call (graph -> state input -> value), only while streaming:
        # offline evaluation and calibration run unrelated samples, which start from zeros.
        self.streaming = False
        self._states: dict[str, dict[str, np.ndarray]] = {g: {} for g in m.graphs}
        self._before: dict[str, dict[str, np.ndarray]] = {g: {} for g in m.graphs}  # states of the last call

    def reset_state(self, modality: str | None = None) -> None:
        """Forget carried state (of the graphs that take this modality, or of all): a stream restarts."""
        for g in self._states:
            if modality is None or any(s.modality == modality for s in self.manifest.graphs[g].inputs):
                self._states[g], self._before[g] = {}, {}

    def _check_members(self) -> None:
        outs = {mod: [o.name for o in self.manifest.graphs[g].outputs] for mod, g in self.manifest.fusion.members.items()}
        first = next(iter(outs.values()))
        for mod, names in outs.items():
            if names != first:
                raise EdgemmError(f"Manifest: fusion.members | Late fusion needs members with the same outputs; "
                                  f"{mod} has {', '.join(names)}, expected {', '.join(first)}.")

    def _output_specs(self) -> dict[str, OutputSpec]:
        specs = {o.name: o for o in self.manifest.graphs[self.decision_graph].outputs}
        if self.form == "late":
            # The late rule combines probabilities, so fused classification scores are probabilities.
            specs = {n: OutputSpec(**{**o.__dict__, "scores": "probabilities"}) if o.task == "classification" else o
                     for n, o in specs.items()}
        return specs

    def use_runners(self, runners: Mapping[str, BaseRunner]) -> None:
        """Run the graphs on these runners (activated and owned by the caller), e.g. candidate models of the
        accuracy guard, with this bundle's fusion logic."""
        missing = set(self.manifest.graphs) - set(runners)
        if missing:
            raise ValueError(f"no runner for graphs {sorted(missing)}")
        self.runners = dict(runners)

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self):
        try:
            for r in self.runners.values():
                r.activate()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for r in self.runners.values():
            r.deactivate()

    # -- one graph ------------------------------------------------------------------------------------
    def run_graph(self, graph: str, tensors: Mapping[str, np.ndarray],
                  present: Mapping[str, bool] | None = None, advance: bool = True) -> dict[str, np.ndarray]:
        """Build the graph's feed from tensors (input name or "graph.output" for embeddings) and run it.

        While streaming, state inputs get what their ``state_of`` outputs gave on the previous call; a rerun
        of the same tick (``advance=False``, attribution) starts from the same state and carries nothing on."""
        runner = self.runners[graph]
        spec = self.manifest.graphs[graph]
        states = None
        if self.streaming:
            states = self._states[graph] if advance else self._before[graph]
        feed = graph_feed(spec, runner.input_metadata(), tensors, present, self._encoder_modality,
                          where=f"Graph: {graph}", states=states)
        try:
            outputs = runner.infer(feed)
        except EdgemmError:
            raise
        except Exception as exc:  # the model rejects what its manifest says it takes: one line, not a traceback
            raise refused_feed(f"{self.bundle.source or self.bundle.root} (graph {graph})", feed, exc,
                               synthesised=False) from exc
        if self.streaming and advance:
            self._before[graph] = self._states[graph]
            self._states[graph] = {s.name: outputs[s.state_of] for s in spec.inputs
                                   if s.state_of and s.state_of in outputs}
        return outputs

    # -- intermediate -----------------------------------------------------------------------------------
    def encoder_graph(self, modality: str) -> str:
        try:
            return self.manifest.fusion.encoders[modality]
        except KeyError:
            raise EdgemmError(f"Fusion: {modality} | The bundle has no encoder for it; expected one of "
                              f"{', '.join(self.manifest.fusion.encoders)}.") from None

    def encode(self, modality: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one modality's encoder; returns its outputs keyed "graph.output" (what head inputs name)."""
        graph = self.encoder_graph(modality)
        outputs = self.run_graph(graph, tensors)
        return {f"{graph}.{k}": v for k, v in outputs.items()}

    def fuse(self, embeddings: Mapping[str, np.ndarray], present: Mapping[str, bool] | None = None) -> dict[str, np.ndarray]:
        """Run the head on embeddings; a missing modality's embeddings are zeros and its flag is 0."""
        return self.run_graph(self.manifest.fusion.head, embeddings, present)

    # -- late -------------------------------------------------------------------------------------------
    def member(self, modality: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph = self.manifest.fusion.members[modality]
        return self.run_graph(graph, tensors)

    def combine(self, member_outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Combine the outputs of the members that are present by the manifest's rule."""
        f = self.manifest.fusion
        if not member_outputs:
            raise EdgemmError("Fusion | No modality is present; expected at least one member's outputs.")
        mods = list(member_outputs)
        weights = np.array([f.weights.get(m, 1.0) for m in mods], np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(mods))
        weights = weights / weights.sum()
        graph_specs = {o.name: o for o in self.manifest.graphs[self.decision_graph].outputs}
        fused = {}
        for name, spec in graph_specs.items():
            values = [np.asarray(member_outputs[m][name], np.float64) for m in mods]
            if spec.task == "classification":
                probs = [softmax(v) if spec.scores == "logits" else v for v in values]
                if f.rule == "vote":
                    votes = np.zeros_like(probs[0])
                    for w, p in zip(weights, probs):
                        votes[np.arange(p.shape[0]), p.argmax(axis=-1)] += w
                    out = votes
                elif f.rule == "max":
                    out = np.max(np.stack(probs), axis=0)
                    out = out / out.sum(axis=-1, keepdims=True)
                else:
                    out = np.tensordot(weights, np.stack(probs), axes=1)
            elif f.rule == "max":
                out = np.max(np.stack(values), axis=0)
            else:  # weighted mean; a "vote" over real values is their weighted mean too
                out = np.tensordot(weights, np.stack(values), axes=1)
            fused[name] = out.astype(np.float32)
        return fused

    # -- whole bundle -----------------------------------------------------------------------------------
    def infer(self, tensors: Mapping[str, np.ndarray], present: Mapping[str, bool] | None = None) -> FusionResult:
        """Run the whole bundle on one sample (tensors keyed by input name)."""
        present = {m: True for m in SENSORS} | dict(present or {})
        degraded = [m for m in self.manifest.modalities() if not present.get(m, True)]
        if self.form == "early":
            return FusionResult(self.run_graph(self.decision_graph, tensors, present), degraded)
        if self.form == "intermediate":
            embeddings: dict[str, np.ndarray] = {}
            for mod in self.manifest.fusion.encoders:
                if present.get(mod, True):
                    embeddings.update(self.encode(mod, tensors))
            return FusionResult(self.fuse(embeddings, present), degraded, embeddings=embeddings)
        members = {mod: self.member(mod, tensors) for mod in self.manifest.fusion.members if present.get(mod, True)}
        return FusionResult(self.combine(members), degraded, per_modality=members)
