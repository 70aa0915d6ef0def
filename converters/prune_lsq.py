"""Least-squares layer reconstruction from calibration activations (He et al. 2017, ThiNet).

After channels are removed (or weights zeroed for 2:4), the next layer sees a different input. Without
retraining, its weights are re-fitted so that its outputs on calibration data match the original
model's outputs at the same layer:

    W* = argmin_W ||X W - Y||^2 + lam ||W - W0||^2   =   (X^T X + lam I)^-1 (X^T Y + lam W0)

X: the layer's input in the pruned model (im2col rows for a Conv, plus a ones column for the bias),
Y: the original model's output of that layer (restricted to the channels the layer itself keeps),
W0: the plainly sliced weights. Pulling towards W0 (not towards zero) means that with little data the
answer stays the sliced layer; lam is chosen by two-fold cross-validation over the calibration samples,
and "no change" (lam = infinity) is one of the candidates, so reconstruction never makes the
held-out fit worse than plain slicing.

Only the normal equations (X^T X, X^T Y, sum Y^2 per fold) are accumulated, never the rows, so memory is
bounded by the layer size whatever the calibration set; rows (output positions) are subsampled per
sample when a feature map is large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to mean(diag(X^T X))


def conv_geometry(attrs: dict, in_spatial: list[int], kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(pads_begin, strides, dilations) of a Conv, with auto_pad resolved for these input sizes."""
    nd = len(kernel)
    strides = attrs.get("strides") or [1] * nd
    dil = attrs.get("dilations") or [1] * nd
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin = []
        for size, k, s, d in zip(in_spatial, kernel, strides, dil):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        pads = begin + [None] * nd
        return pads, strides, dil
    pads = attrs.get("pads") or [0] * (2 * nd)
    if auto == "VALID":
        pads = [0] * (2 * nd)
    return list(pads), strides, dil


def im2col(x: np.ndarray, attrs: dict, kernel: list[int], out_spatial: list[int],
           picks: np.ndarray | None = None) -> np.ndarray:
    """Conv input [n, C, *spatial] -> patches [n, P, C * prod(kernel)] in the order of W.reshape(Cout, -1).

    P is the number of output positions; 1-D convolutions are handled as 2-D with height 1. picks
    ([n, R] output position indices per sample) gathers only those positions: the same values as
    ``im2col(...)[sample, picks]`` without expanding the whole map (k*k times the input) first.
    """
    one_d = x.ndim == 3
    if one_d:
        x = x[:, :, None, :]
        kernel = [1, kernel[0]]
        attrs = dict(attrs)
        for key in ("strides", "dilations"):
            if attrs.get(key):
                attrs[key] = [1, attrs[key][0]]
        if attrs.get("pads"):
            p = attrs["pads"]
            attrs["pads"] = [0, p[0], 0, p[1]]
        out_spatial = [1, out_spatial[0]]
    n, c, h, w = x.shape
    pads, strides, dil = conv_geometry(attrs, [h, w], kernel)
    kh, kw = kernel
    ho, wo = out_spatial
    pt, pl = pads[0], pads[1]
    need_h = (ho - 1) * strides[0] + (kh - 1) * dil[0] + 1
    need_w = (wo - 1) * strides[1] + (kw - 1) * dil[1] + 1
    pb, pr = max(0, need_h - h - pt), max(0, need_w - w - pl)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    if picks is not None:
        oh, ow = np.divmod(np.asarray(picks), wo)  # [n, R] output row / column of each picked position
        hh = oh[:, :, None, None] * strides[0] + (np.arange(kh) * dil[0])[None, None, :, None]
        ww = ow[:, :, None, None] * strides[1] + (np.arange(kw) * dil[1])[None, None, None, :]
        # Advanced indices around a slice: the result is [n, R, kh, kw, C].
        patches = xp[np.arange(n)[:, None, None, None], :, hh, ww]
        return patches.transpose(0, 1, 4, 2, 3).reshape(n, picks.shape[1], c * kh * kw)
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dil[0], j * dil[1]
            patch = xp[:, :, hs:hs + (ho - 1) * strides[0] + 1:strides[0], ws:ws + (wo - 1) * strides[1] + 1:strides[1]]
            cols[:, :, :, :, i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n, ho * wo, c * kh * kw)


@dataclass
class FoldStats:
    A: np.ndarray  # X^T X  (k x k)
    B: np.ndarray  # X^T Y  (k x m)
    yy: np.ndarray  # sum Y^2 per output (m)
    ysum: np.ndarray  # sum Y per output (m)
    rows: int = 0


class LayerStats:
    """Normal equations of one layer, accumulated per fold (fold = sample index parity)."""

    def __init__(self, k: int, m: int, bias: bool):
        self.k, self.m, self.bias = k + (1 if bias else 0), m, bias
        self.folds = [FoldStats(np.zeros((self.k, self.k)), np.zeros((self.k, m)), np.zeros(m), np.zeros(m))
                      for _ in range(2)]

    def add(self, x_rows: np.ndarray, y_rows: np.ndarray, fold: int) -> None:
        """Add rows (2-D, one fold). Products in float32 BLAS, sums kept in float64."""
        x = np.asarray(x_rows, np.float32)
        if self.bias:
            x = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1)
        y = np.asarray(y_rows, np.float32)
        f = self.folds[fold]
        f.A += (x.T @ x).astype(np.float64)
        f.B += (x.T @ y).astype(np.float64)
        y64 = y.astype(np.float64)
        f.yy += np.einsum("ij,ij->j", y64, y64)
        f.ysum += y64.sum(axis=0)
        f.rows += x.shape[0]

    def add_samples(self, x: np.ndarray, y: np.ndarray, first_sample: int) -> None:
        """Add rows [n, P, K] / [n, P, M] of n consecutive samples, split into folds by sample parity."""
        for fold in (0, 1):
            sel = [i for i in range(x.shape[0]) if (first_sample + i) % 2 == fold]
            if sel:
                self.add(x[sel].reshape(-1, x.shape[-1]), y[sel].reshape(-1, y.shape[-1]), fold)

    def total(self) -> FoldStats:
        a, b = self.folds
        return FoldStats(a.A + b.A, a.B + b.B, a.yy + b.yy, a.ysum + b.ysum, a.rows + b.rows)

    @property
    def rows(self) -> int:
        return self.folds[0].rows + self.folds[1].rows


def fit_error(W: np.ndarray, f: FoldStats) -> float:
    """||X W - Y||^2 on a fold, from its normal equations."""
    return float(np.einsum("ij,ij->", W, f.A @ W) - 2 * np.einsum("ij,ij->", W, f.B) + f.yy.sum())


def _variance(f: FoldStats) -> float:
    if f.rows == 0:
        return 0.0
    return float((f.yy - f.ysum ** 2 / f.rows).sum())


def _ridge(A: np.ndarray, B: np.ndarray, W0: np.ndarray, lam: float) -> np.ndarray:
    """(A + lam I)^-1 (B + lam W0). One LU solve (far cheaper than an eigendecomposition for a few lam)."""
    k = A.shape[0]
    return np.linalg.solve(A + lam * np.eye(k), B + lam * W0)


def solve(stats: LayerStats, W0: np.ndarray) -> tuple[np.ndarray, dict]:
    """Reconstructed weights (k x m, bias row last if any) and how the fit went.

    lam is picked by two-fold cross-validation (fit on one fold, score on the other); W0 itself is a
    candidate, so the held-out error is never worse than plain slicing's.
    """
    total = stats.total()
    var = max(_variance(total), 1e-30)
    base = fit_error(W0, total) / var
    scale = float(np.mean(np.diag(total.A))) or 1.0
    folds = stats.folds
    scores = {}
    if folds[0].rows > 0 and folds[1].rows > 0:
        scores[float("inf")] = fit_error(W0, folds[0]) + fit_error(W0, folds[1])
        for lam in LAMBDAS:
            try:
                scores[lam] = (fit_error(_ridge(folds[0].A, folds[0].B, W0, lam * scale), folds[1])
                               + fit_error(_ridge(folds[1].A, folds[1].B, W0, lam * scale), folds[0]))
            except np.linalg.LinAlgError:
                continue
        best = min(scores, key=scores.get)
    else:
        best = LAMBDAS[2]
    W = W0 if best == float("inf") else _ridge(total.A, total.B, W0, best * scale)
    after = fit_error(W, total) / var
    return W, {"lambda": best if best != float("inf") else None, "rows": total.rows,
               "error_sliced": round(base, 6), "error_reconstructed": round(after, 6)}


def obs_prune(W: np.ndarray, H: np.ndarray, mask: np.ndarray, order: np.ndarray | None = None,
              damp: float = 0.01, block: int = 128) -> np.ndarray:
    """Zero W where mask is False and update the surviving weights to keep X W unchanged (OBS updates as
    in SparseGPT, Frantar & Alistarh 2023), for H = X^T X. W, mask: [K, M]; returns the new [K, M].

    Inputs are processed in `order` (default 0..K-1); each removed weight's error is spread over the inputs
    not yet processed, through the Cholesky factor of H^-1. Costs O(K^3 + M K^2), not a solve per row.
    """
    K = W.shape[0]
    order = np.arange(K) if order is None else np.asarray(order)
    Wt = W[order].T.astype(np.float64).copy()  # [M, K] in processing order
    keep = mask[order].T
    Hp = H[np.ix_(order, order)].astype(np.float64).copy()
    dead = np.diag(Hp) <= 0
    Hp[dead, dead] = 1.0
    Wt[:, dead] = 0.0
    Hp[np.diag_indices(K)] += damp * float(np.mean(np.diag(Hp)))
    L = np.linalg.cholesky(Hp)
    Linv = np.linalg.solve(L, np.eye(K))
    Hinv = Linv.T @ Linv  # H^-1
    U = np.linalg.cholesky(Hinv).T  # upper Cholesky factor of H^-1
    for i1 in range(0, K, block):
        i2 = min(K, i1 + block)
        W1 = Wt[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            q = np.where(keep[:, i1 + i], w, 0.0)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            W1[:, i] = q
            E1[:, i] = err
        Wt[:, i1:i2] = W1
        Wt[:, i2:] -= E1 @ U[i1:i2, i2:]
    out = np.empty_like(W, dtype=np.float64)
    out[order] = Wt.T
    return np.where(mask, out, 0.0)


def solve_masked(stats: LayerStats, W0: np.ndarray, mask: np.ndarray, order: np.ndarray | None = None
                 ) -> tuple[np.ndarray, dict]:
    """Masked re-fit: the dense least-squares fit (``solve``) made sparse by OBS updates (``obs_prune``),
    so each output only uses the inputs where mask[:, j] is True (2:4). Kept only if it fits the
    calibration data better than plainly masking W0."""
    total = stats.total()
    var = max(_variance(total), 1e-30)
    W0m = W0 * mask
    base = fit_error(W0m, total) / var
    dense, rec = solve(stats, W0)
    W = obs_prune(dense, total.A, mask, order)
    after = fit_error(W, total) / var
    if not after <= base:
        W, after = W0m, base
    return W, {"lambda": rec["lambda"], "rows": total.rows, "error_sliced": round(base, 6),
               "error_reconstructed": round(after, 6)}
