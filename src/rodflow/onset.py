"""When each method enters the edge of stability, and when its loss first spikes (issue 17; docs/rod_flow.md).

**Onset** is the first step at which the method's estimate of GD's period-2 oscillation exceeds ``FACTOR``
times its running floor (its smallest value so far): below the threshold the oscillation decays to a floor
(GD's: rounding or the decaying transient of directions with 1 < ηλ < 2), and entering the edge of stability it
grows exponentially out of it. The oscillation is

- for GD, a = ‖w_{t−2} − 4 w_{t−1} + 6 w_t − 4 w_{t+1} + w_{t+2}‖ / 16 from its recorded iterates (full or
  projected: the difference is linear), each coordinate counted only above its own rounding level. For
  w_t = m_t + (−1)^t a_t this is ‖a_t‖ up to the fourth derivative of the drift m; the second difference (w_{t+1} − 2 w_t + w_{t−1})/4 is not enough: on the sharp valley the drift's
  curvature held it at 1e-10 where the 4th difference reaches the rounding level 1e-16;
- for a process whose class names an ``oscillation_column`` (rod flow: ``rod_resolved_length``, ‖δ‖ over the
  coordinates the ends c ± δ resolve, |δ_i| > eps·|c_i|: the rod's counterpart of GD's rounding level), that column;
  with an ``oscillation_gate`` (rod flow: ``secant_sharpness``) a step counts as the onset only where η times the
  gate is ≥ 1 — the rod is then open along a direction in which GD oscillates (GD's multiplier 1 − ηλ < 0) —
  for plain GD (with another optimizer the threshold is the rule's, and the gate is off): a rod collapsed to
  its rounding level wanders there in GD's flat directions (ηs ≈ 0) and its resolved length jumps by 100×
  without any oscillation (measured: onsets at 14–180 on MLPs where GD has none);
- for a process whose class names an ``edge_column`` (central flow: ``n_critical``), the first step where that
  column is ≥ 1 (the flow's constraint becomes active) is the onset itself;
- none for the others (gradient flow): NaN.

**First spike** is the first step at which the method's predicted loss (GD: its two-step average
½(L_t + L_{t+1}); models: ``loss_pred``) rises above its running minimum by more than ``RISE`` times the decrease
achieved so far (L_0 − min), a rule independent of the loss's scale and offset.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import processes

FACTOR = 100.0
RISE = 0.01


def onset_step(amplitude, factor: float = FACTOR, allowed=None) -> float:
    """First index at which ``amplitude`` (a Series indexed by step, or an array indexed from 0) is at least
    ``factor`` times its smallest positive finite value so far; NaN when it never is. ``allowed`` (booleans
    aligned with ``amplitude``) restricts the steps that may count as the onset; the floor is taken over all."""
    a = amplitude if isinstance(amplitude, pd.Series) else pd.Series(np.asarray(amplitude, float))
    ok = np.ones(len(a), bool) if allowed is None else np.asarray(allowed, bool)
    finite = np.isfinite(a.to_numpy(float))
    a, ok = a[finite].astype(float), ok[finite]
    floor = a.where(a > 0).cummin().shift(1)  # the floor before this step
    hit = a.index[(a >= factor * floor).to_numpy() & ok]
    return float(hit[0]) if len(hit) else math.nan


def first_spike_step(loss, rise: float = RISE) -> float:
    """First index at which ``loss`` exceeds its running minimum by more than ``rise`` × (loss[0] − minimum)."""
    s = loss if isinstance(loss, pd.Series) else pd.Series(np.asarray(loss, float))
    s = s[np.isfinite(s.to_numpy(float))].astype(float)
    if s.empty:
        return math.nan
    low = s.cummin()
    hit = s.index[((s - low) > rise * (s.iloc[0] - low)).to_numpy() & (s.iloc[0] > low).to_numpy()]
    return float(hit[0]) if len(hit) else math.nan


ROUNDING = 16.0  # a coordinate's fourth difference within ROUNDING·eps·max|w_i| of zero is rounding


def gd_oscillation(iterates: np.ndarray) -> pd.Series:
    """GD's period-2 amplitude per step from its iterates (steps + 1, d): the centred fourth difference / 16
    (NaN at the two first and last steps), counting only the coordinates whose fourth difference is above their
    own rounding level, ``ROUNDING``·eps·max|w_i| over the five iterates (eps of the iterates' dtype): the ulp
    flips of a coordinate that only drifts would otherwise count as oscillation — on the sharp valley below its
    threshold (η = 0.1) they fired an onset at sharpness 5.6 against 2/η = 20, and on the self-stabilization toy
    they fired before the real oscillation, which lives in a coordinate of size 1e-21, had grown at all."""
    raw = np.asarray(iterates)
    eps = np.finfo(raw.dtype).eps if np.issubdtype(raw.dtype, np.floating) else np.finfo(float).eps
    w = raw.astype(float)
    out = np.full(len(w), np.nan)
    if len(w) >= 5:
        d4 = w[:-4] - 4 * w[1:-3] + 6 * w[2:-2] - 4 * w[3:-1] + w[4:]
        size = np.abs(w[:-4])  # max |w_i| over the five iterates, without a 5-fold copy of the record
        for part in (w[1:-3], w[2:-2], w[3:-1], w[4:]):
            np.maximum(size, np.abs(part), out=size)
        d4 = np.where(np.abs(d4) > ROUNDING * eps * size, d4, 0.0)
        out[2:-2] = np.linalg.norm(d4, axis=1) / 16
    return pd.Series(out)


def onsets(result) -> dict[str, dict[str, float | str]]:
    """``{method: {"onset_step", "first_spike_step", ["onset_reason"]}}`` for every method of a run."""
    from .summary import gd_loss_two_step

    out: dict[str, dict[str, float | str]] = {}
    for m in result.methods:
        df = result.method(m)
        cls = processes.REGISTRY.get(m) if m in processes.REGISTRY else None
        row: dict[str, float | str] = {"onset_step": math.nan}
        if m == "gd":
            its = result.iterates.get("gd")
            if its is None:
                row["onset_reason"] = "GD's iterates were not recorded (record_iterates=False)"
            else:
                row["onset_step"] = onset_step(gd_oscillation(its)[: len(df)].set_axis(df.index[: len(its)]))
            spike = gd_loss_two_step(result)
        else:
            col, edge = getattr(cls, "oscillation_column", None), getattr(cls, "edge_column", None)
            if col and col in df:
                gate = getattr(cls, "oscillation_gate", None)
                allowed = None
                if gate and gate in df and result.config.get("optimizer", "gd") == "gd":
                    allowed = np.nan_to_num(result.lr * df[gate].to_numpy(float), nan=0.0) >= 1.0
                row["onset_step"] = onset_step(df[col], allowed=allowed)
            elif edge and edge in df:
                hit = df.index[(df[edge] >= 1).to_numpy()]
                row["onset_step"] = float(hit[0]) if len(hit) else math.nan
            else:
                row["onset_reason"] = "the model has no oscillation"
            spike = df["loss_pred"] if "loss_pred" in df else None
        row["first_spike_step"] = first_spike_step(spike) if spike is not None else math.nan
        out[m] = row
    return out
