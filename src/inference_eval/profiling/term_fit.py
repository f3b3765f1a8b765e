"""The time model fitted term by term: each term against the measured time of the ops it stands for.

A fit of one stage total to every term at once cannot tell the terms apart for one model (see
``regression``): b*s*h^2*l, b*s*h*h'*l, b*s*h*l and b*s*h'*l are then all constants times b*s. Here
each group of ops in ``TERMS`` is fitted on its own measured time (the module tables), with only the
columns of the terms it stands for plus an intercept, by non-negative least squares weighted by 1/y
(relative error, as the total fit). A coefficient that several groups share (eta, omega) is the sum of
their fitted values; the stage's constant (mu, nu) is the sum of every group's intercept. The stage
total is then the sum of the terms, a valid coefficient row of the same formula, and is scored on the
points table exactly as the total fit is, held-out shapes included.

Why each op goes where it goes (docs/theory.md, "The time model", carries the same table):

prefill
  mha_proj     qkv_proj, o_proj            alpha   GEMMs of b*s tokens with h x h weights: 8bsh^2 FLOPs
  ffn_proj     gate_up_proj, down_proj     beta    GEMMs with h x h' weights: 6bshh' FLOPs
  attention    attention                   gamma,  QK^T and PV over s x s scores per head (b*s^2*n);
                                           eta     its linear part (Q, K, V, O reads; b*s*h) on eta
  elementwise  rope, add_norm_attn,        eta     element-wise over b*s*h activations
               add_norm_mlp
  kv_cache     kv_cache                    eta     writes the b*s*h_kv K and V entries of the prompt
                                                   (linear in b*s: a constant alone misses it)
  activation   act_mul                     lambda  element-wise over b*s*h' activations
decode (s: the context, new token included)
  kv_cache     kv_cache                    phi,    a concatenating cache copies b*s*h_kv entries (phi);
                                           omega   an in-place cache appends b*h_kv (omega)
  attention    attention                   psi,    reads K and V and forms the scores over s positions
                                           omega   per head: b*s*n at a fixed head size d = h/n
  projections  qkv_proj, o_proj,           omega   weights read once per step (intercept, into nu),
               gate_up_proj, down_proj             plus a per-token part (b*h)
  elementwise  rope, add_norm_attn,        omega   element-wise over b*h (and b*h') activations
               add_norm_mlp, act_mul

``other`` (kernels outside every op range: embedding, final norm, masks) is outside the decoder
layers and outside the fit target (``sweep.points_table``), so no term stands for it.

The module tables hold per-op times only for the seq and batch sweep shapes; the held-out shapes
are measured as stage totals only. A term's ``heldout_mape`` is therefore leave-one-shape-out over
the sweep shapes (``heldout_kind`` says so); the total's is on the held-out shapes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inference_eval.opnames import OPS, STAGES
from inference_eval.profiling import regression

# stage -> term group -> (ops, coefficients fitted besides the intercept)
TERMS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "prefill": {
        "mha_proj": (("qkv_proj", "o_proj"), ("alpha",)),
        "ffn_proj": (("gate_up_proj", "down_proj"), ("beta",)),
        "attention": (("attention",), ("gamma", "eta")),
        "elementwise": (("rope", "add_norm_attn", "add_norm_mlp"), ("eta",)),
        "kv_cache": (("kv_cache",), ("eta",)),
        "activation": (("act_mul",), ("lambda",)),
    },
    "decode": {
        "kv_cache": (("kv_cache",), ("phi", "omega")),
        "attention": (("attention",), ("psi", "omega")),
        "projections": (("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("omega",)),
        "elementwise": (("rope", "add_norm_attn", "add_norm_mlp", "act_mul"), ("omega",)),
    },
}
INTERCEPT = {"prefill": "mu", "decode": "nu"}
MODULE_TARGET = "time_median_s"   # per op, all layers, median over repeats: sums to the points' target
SHAPE_COLUMNS = ("h", "h_ff", "n", "l")


def _check_terms() -> None:
    for stage, groups in TERMS.items():
        ops = [op for g in groups.values() for op in g[0]]
        if sorted(ops) != sorted(OPS):
            raise AssertionError(f"TERMS[{stage!r}] must cover every op of opnames.OPS exactly once, got {ops}")


_check_terms()


def module_points(modules: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """One row per (library, model, b, s, stage) of the module tables: each term group's measured time
    (columns named by group), the model shape from ``points`` and the decode context (s + 1)."""
    need = ["library", "model", "b", "s", "stage", "op", MODULE_TARGET]
    missing = [c for c in need if c not in modules.columns]
    if missing:
        raise ValueError(f"module tables lack columns {missing}")
    m = modules[need].drop_duplicates(["library", "model", "b", "s", "stage", "op"])
    shapes = points[["library", "model", *SHAPE_COLUMNS]].drop_duplicates()
    out = []
    for stage, groups in TERMS.items():
        part = m[m["stage"] == stage]
        if part.empty:
            continue
        wide = part.pivot_table(index=["library", "model", "b", "s", "stage"], columns="op", values=MODULE_TARGET,
                                aggfunc="first").reset_index()
        for group, (ops, _) in groups.items():
            absent = [op for op in ops if op not in wide.columns]
            if absent:
                raise ValueError(f"{stage} module tables lack ops {absent} (needed by term {group!r})")
            wide[group] = wide[list(ops)].sum(axis=1, min_count=len(ops))
        out.append(wide[["library", "model", "b", "s", "stage", *groups]])
    if not out:
        return pd.DataFrame()
    table = pd.concat(out, ignore_index=True).merge(shapes, on=["library", "model"], how="left")
    unknown = table[table["h"].isna()][["library", "model"]].drop_duplicates()
    if len(unknown):
        raise ValueError(f"module tables of {unknown.to_dict('records')} have no points table giving the model shape")
    table["context"] = table["s"] + (table["stage"] == "decode").astype(int)
    return table


def _columns(stage: str, frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    X = regression.features(stage, frame["b"], regression.context(frame), frame["h"], frame["h_ff"], frame["n"],
                            frame["l"])
    order = regression.COEFFICIENTS[stage]
    return X[:, [order.index(c) for c in (*names, INTERCEPT[stage])]]


def _solve(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    w = 1.0 / np.maximum(np.abs(y), np.finfo(float).tiny)
    return regression.nnls((X / scale) * w[:, None], y * w) / scale


def _leave_one_out_mape(X: np.ndarray, y: np.ndarray) -> float:
    if len(y) <= X.shape[1]:
        return float("nan")  # too few shapes to leave one out and still determine the fit
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = _solve(X[keep], y[keep])
        errors.append(abs(X[i] @ coef - y[i]) / abs(y[i]))
    return float(np.mean(errors) * 100.0)


def fit_terms(modules: pd.DataFrame, stage: str) -> list[dict]:
    """Per term group of ``stage``: its coefficients (the intercept under mu / nu), r2, leave-one-out MAPE.

    ``modules``: ``module_points`` rows of one library (one or several models).
    """
    if stage not in TERMS:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    rows = []
    for group, (ops, names) in TERMS[stage].items():
        data = modules.dropna(subset=[group])
        if len(data) < 2:
            raise ValueError(f"{stage} term {group!r}: {len(data)} module points; need at least 2")
        X = _columns(stage, data, names)
        y = data[group].to_numpy(dtype=float)
        coef = _solve(X, y)
        rank = int(np.linalg.matrix_rank(X / np.where(np.linalg.norm(X, axis=0) == 0, 1, np.linalg.norm(X, axis=0)),
                                         tol=1e-8))
        row = {"term": group, "ops": ",".join(ops), **dict(zip((*names, INTERCEPT[stage]), map(float, coef))),
               "r2": regression.r_squared(y, X @ coef), "fit_mape": regression.mape(y, X @ coef),
               "heldout_mape": _leave_one_out_mape(X, y), "heldout_kind": "leave-one-shape-out (module points)",
               "n_points": len(data), "n_heldout": 0, "rank": rank,
               "identified": "all" if rank == X.shape[1] else "not all (columns collinear)",
               "target": MODULE_TARGET}
        rows.append(row)
    return rows


def sum_of_terms(term_rows: list[dict], stage: str) -> dict[str, float]:
    """The stage's coefficients as the sum of its terms' (shared columns add; intercepts add into mu/nu)."""
    total = dict.fromkeys(regression.COEFFICIENTS[stage], 0.0)
    for row in term_rows:
        for name in total:
            value = row.get(name)
            if value is not None and not np.isnan(value):
                total[name] += value
    return total


def per_term_table(points: pd.DataFrame, modules: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows ``fit = per_term`` per library x stage: one per term group, then ``term = total`` (the sum of
    the terms, scored on the points table like the total fit)."""
    mp = module_points(modules, points)
    rows = []
    if mp.empty:
        return pd.DataFrame()
    all_names = (*regression.COEFFICIENTS["prefill"], *regression.COEFFICIENTS["decode"])
    for (library, stage), group in mp.groupby(["library", "stage"], sort=True):
        models = ",".join(sorted(group["model"].unique()))
        terms = fit_terms(group, stage)
        for row in terms:
            rows.append({"library": library, "stage": stage, "fit": "per_term", **dict.fromkeys(all_names, np.nan),
                         **row, "models": models, "formula": regression.FORMULAS[stage],
                         "constraint": "all coefficients >= 0 (NNLS)"})
        coef = sum_of_terms(terms, stage)
        pts = points[(points["library"] == library) & (points["stage"] == stage)]
        fitted = regression.Fit(stage=stage, coefficients=coef, r2=float("nan"), heldout_mape=float("nan"),
                                n_points=0, n_heldout=0, rank=0, identified="")
        fit_rows, held = pts[~pts["heldout"].astype(bool)], pts[pts["heldout"].astype(bool)]
        y_fit = fit_rows[target].to_numpy(float)
        rows.append({"library": library, "stage": stage, "fit": "per_term", "term": "total",
                     "ops": ",".join(op for ops, _ in TERMS[stage].values() for op in ops),
                     **dict.fromkeys(all_names, np.nan), **coef,
                     "r2": regression.r_squared(y_fit, fitted.predict(fit_rows)) if len(fit_rows) else np.nan,
                     "heldout_mape": regression.mape(held[target].to_numpy(float), fitted.predict(held))
                     if len(held) else np.nan,
                     "fit_mape": regression.mape(y_fit, fitted.predict(fit_rows)) if len(fit_rows) else np.nan,
                     "heldout_kind": "held-out shapes (points)", "heldout_mape_by_model":
                     regression.per_model_heldout(pts, fitted, target),
                     "n_points": len(fit_rows), "n_heldout": len(held), "rank": sum(r["rank"] for r in terms),
                     "identified": "all (each term on its own ops' time)", "models": models, "target": target,
                     "formula": regression.FORMULAS[stage], "constraint": "all coefficients >= 0 (NNLS)"})
    return pd.DataFrame(rows)
