"""The time models of docs/theory.md, fitted by non-negative least squares.

  T_prefill = alpha*bsh^2*l + beta*bshh'*l + gamma*bs^2*n*l + eta*bsh*l + lambda*bsh'*l + mu
  T_decode  = phi*bsh*l + psi*bsn*l + omega*bh*l + nu

Every coefficient is constrained to be >= 0: each is a cost per unit of work (seconds per
FLOP-like term) or a fixed overhead, none of which can be negative. Columns are scaled to unit norm
before the fit (the terms differ by many orders of magnitude) and the coefficients scaled back.

For one model (fixed h, h', n, l) several terms are proportional to each other: in prefill
bsh^2*l, bshh'*l, bsh*l and bsh'*l are all constants times b*s, so only their combination
``alpha*h^2 + beta*h*h' + eta*h + lambda*h'`` (times b*s*l) is identified; in decode bsh*l and bsn*l
are both constants times b*s. ``rank`` and ``identified`` in the output say so; the fit is still
unique in its predictions. Points from several model shapes make every coefficient identifiable;
``term_fit`` fits each term on its own ops' measured time instead, which identifies them for one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inference_eval.opnames import OPS

COEFFICIENTS = {
    "prefill": ("alpha", "beta", "gamma", "eta", "lambda", "mu"),
    "decode": ("phi", "psi", "omega", "nu"),
}
FORMULAS = {
    "prefill": "alpha*b*s*h^2*l + beta*b*s*h*h'*l + gamma*b*s^2*n*l + eta*b*s*h*l + lambda*b*s*h'*l + mu",
    "decode": "phi*b*s*h*l + psi*b*s*n*l + omega*b*h*l + nu",
}


def features(stage: str, b, s, h, h_ff, n, l) -> np.ndarray:
    """Design matrix (points x coefficients) of ``stage``'s time model."""
    b, s, h, h_ff, n, l = (np.asarray(x, dtype=float) for x in (b, s, h, h_ff, n, l))
    if stage == "prefill":
        cols = [b * s * h**2 * l, b * s * h * h_ff * l, b * s**2 * n * l, b * s * h * l, b * s * h_ff * l,
                np.ones_like(b)]
    elif stage == "decode":
        cols = [b * s * h * l, b * s * n * l, b * h * l, np.ones_like(b)]
    else:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(COEFFICIENTS)}")
    return np.column_stack(cols)


def nnls(A: np.ndarray, y: np.ndarray, max_iter: int | None = None, tol: float = 1e-12) -> np.ndarray:
    """Lawson-Hanson active-set solution of min ||Ax - y|| subject to x >= 0."""
    m, k = A.shape
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    max_iter = max_iter or 30 * k
    w = A.T @ (y - A @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol:
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(k)
            z[passive] = np.linalg.lstsq(A[:, passive], y, rcond=None)[0]
            if (z[passive] > tol).all():
                x = z
                break
            blocking = passive & (z <= tol)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = A.T @ (y - A @ x)
    return x


@dataclass
class Fit:
    stage: str
    coefficients: dict[str, float]
    r2: float
    heldout_mape: float
    n_points: int
    n_heldout: int
    rank: int
    identified: str

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        X = features(self.stage, frame["b"], context(frame), frame["h"], frame["h_ff"], frame["n"], frame["l"])
        return X @ np.array([self.coefficients[c] for c in COEFFICIENTS[self.stage]])


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def mape(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    y = np.asarray(y, dtype=float)
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.abs(pred - y) / np.abs(y)) * 100.0)


def _identified(stage: str, X: np.ndarray) -> tuple[int, str]:
    names = COEFFICIENTS[stage]
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    rank = int(np.linalg.matrix_rank(Xs, tol=1e-8))
    if rank == len(names):
        return rank, "all"
    # a coefficient is identified when its column is not in the span of the others
    alone = []
    for j, name in enumerate(names):
        others = np.delete(Xs, j, axis=1)
        if np.linalg.matrix_rank(others, tol=1e-8) < rank:
            alone.append(name)
    return rank, ",".join(alone) if alone else "none alone"


def context(points: pd.DataFrame) -> pd.Series:
    """The s of the time model per point: the ``context`` column where the points carry one (the decode
    step after a prefill of s tokens runs at context s+1, as the theory counts it), else ``s``."""
    return points["context"] if "context" in points.columns else points["s"]


def fit_stage(points: pd.DataFrame, stage: str, target: str = "layers_time_s") -> Fit:
    """Fit ``stage``'s model to the rows of ``points`` with ``heldout == False``; score the others.

    ``points`` columns: b, s, h, h_ff, n, l, heldout, and ``target`` (seconds).
    """
    missing = [c for c in ("b", "s", "h", "h_ff", "n", "l", "heldout", target) if c not in points.columns]
    if missing:
        raise ValueError(f"points table lacks columns {missing}")
    fit_rows = points[~points["heldout"].astype(bool)]
    held = points[points["heldout"].astype(bool)]
    names = COEFFICIENTS[stage]
    if len(fit_rows) < 2:
        raise ValueError(f"{stage}: {len(fit_rows)} fit points; need at least 2")
    X = features(stage, fit_rows["b"], context(fit_rows), fit_rows["h"], fit_rows["h_ff"], fit_rows["n"], fit_rows["l"])
    y = fit_rows[target].to_numpy(dtype=float)
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    # weight each point by 1/y so that short and long shapes count alike (relative error)
    w = 1.0 / np.maximum(np.abs(y), np.finfo(float).tiny)
    coef = nnls((X / scale) * w[:, None], y * w) / scale
    rank, identified = _identified(stage, X)
    f = Fit(stage=stage, coefficients=dict(zip(names, map(float, coef))), r2=float("nan"),
            heldout_mape=float("nan"), n_points=len(fit_rows), n_heldout=len(held), rank=rank, identified=identified)
    f.r2 = r_squared(y, f.predict(fit_rows))
    if len(held):
        f.heldout_mape = mape(held[target].to_numpy(dtype=float), f.predict(held))
    return f


def coefficients_table(points: pd.DataFrame, target: str = "layers_time_s") -> pd.DataFrame:
    """One row per library x stage (``fit = total``, ``term = total``): every coefficient, r2,
    heldout_mape (and per model, with several models), n_points, n_heldout."""
    rows = []
    for (library, stage), group in points.groupby(["library", "stage"], sort=True):
        f = fit_stage(group, stage, target)
        row = {"library": library, "stage": stage, "fit": "total", "term": "total"}
        for name in (*COEFFICIENTS["prefill"], *COEFFICIENTS["decode"]):
            row[name] = f.coefficients.get(name, np.nan)
        fit_mape = mape(group.loc[~group["heldout"].astype(bool), target].to_numpy(float),
                        f.predict(group[~group["heldout"].astype(bool)]))
        row.update({"r2": f.r2, "heldout_mape": f.heldout_mape, "fit_mape": fit_mape,
                    "heldout_kind": "held-out shapes (points)",
                    "heldout_mape_by_model": per_model_heldout(group, f, target), "n_points": f.n_points,
                    "n_heldout": f.n_heldout, "rank": f.rank, "identified": f.identified,
                    "models": ",".join(sorted(group["model"].unique())) if "model" in group else "",
                    "target": target, "formula": FORMULAS[stage], "constraint": "all coefficients >= 0 (NNLS)",
                    "ops": ",".join(OPS)})
        rows.append(row)
    return pd.DataFrame(rows)


def per_model_heldout(points: pd.DataFrame, fit: Fit, target: str) -> str:
    """``model:MAPE`` of the held-out points per model ("" with fewer than two models)."""
    held = points[points["heldout"].astype(bool)]
    if "model" not in held or held["model"].nunique() < 2:
        return ""
    return ";".join(f"{model}:{mape(g[target].to_numpy(float), fit.predict(g)):.3g}"
                    for model, g in held.groupby("model", sort=True))


def predictions(points: pd.DataFrame, coefficients: pd.DataFrame, target: str = "layers_time_s",
                fit: str = "total") -> pd.DataFrame:
    """Points with the ``fit`` model's (``total`` or ``per_term``) ``predicted_s`` beside the measured
    ``target``."""
    if "fit" in coefficients.columns:
        coefficients = coefficients[(coefficients["fit"] == fit) & (coefficients["term"] == "total")]
    out = []
    for (library, stage), group in points.groupby(["library", "stage"], sort=False):
        row = coefficients[(coefficients["library"] == library) & (coefficients["stage"] == stage)]
        if row.empty:
            continue
        names = COEFFICIENTS[stage]
        coef = row.iloc[0][list(names)].to_numpy(dtype=float)
        X = features(stage, group["b"], context(group), group["h"], group["h_ff"], group["n"], group["l"])
        out.append(group.assign(predicted_s=X @ coef, measured_s=group[target]))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
