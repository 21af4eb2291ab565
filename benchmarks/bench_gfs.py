"""Cost of one GFS-sharpness evaluation: rodflow.gfs (adaptive Dormand-Prince + Gauss-Newton / Newton-CG
projection) against fixed-step RK4 at step 1/S (the 2021 edge-of-stability code's method), same φ accuracy.
``run()``: a tiny synthetic tanh MLP (B5); ``run_network()``: mlp-digits on real data (B5-net).

    .venv/bin/python benchmarks/bench_gfs.py            # both
    .venv/bin/python benchmarks/bench_gfs.py tiny       # the tiny MLP only
    .venv/bin/python benchmarks/bench_gfs.py network    # the real-data network only
    .venv/bin/python benchmarks/bench_gfs.py architectures  # CNN, ResNet, ViT, transformer (issue 16)
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_gfs import tiny_mlp  # noqa: E402

from rodflow import problems  # noqa: E402
from rodflow.gfs import gfs_sharpness  # noqa: E402
from rodflow.linalg.eigs import top_eigs  # noqa: E402

# B5-net: a small network on real data (sklearn digits, 10 classes, MSE, tanh), d = 2410
NET = ("mlp-digits", dict(n=20, classes=10, width=32, depth=1))


def rk4_gfs(p, w, gtol: float, refine: int = 1, max_steps: int = 2_000_000):
    """Fixed-step RK4 at h = 1/(refine·S(w0)) until ‖∇L‖ < gtol, then the top eigenvalue."""
    r = rk4_flow(p, w, gtol, refine, max_steps)
    return r["phi"], r["steps"]


def rk4_flow(p, w, gtol: float, refine: int = 1, max_steps: int = 2_000_000) -> dict:
    """``rk4_gfs`` with whether ‖∇L‖ < gtol was reached within ``max_steps`` and the final ‖∇L‖."""
    S = float(top_eigs(lambda V: p.hvp_block(w, V), p.d, 1).values[0])
    h = 1.0 / (refine * S)
    x = w.clone()
    reached, gn = False, math.inf
    for k in range(max_steps):
        k1 = -p.grad(x)
        gn = float(k1.norm())
        if gn < gtol:
            reached = True
            break
        k2 = -p.grad(x + 0.5 * h * k1)
        k3 = -p.grad(x + 0.5 * h * k2)
        k4 = -p.grad(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    phi = float(top_eigs(lambda V: p.hvp_block(x, V), p.d, 1).values[0])
    return dict(phi=phi, steps=k, reached_gtol=reached, grad_norm=gn, S0=S, h=h)


def run(gtol: float = 1e-6, max_refine: int = 64) -> dict:
    """GFS vs RK4 at h = 1/S; then h = 1/(2S), 1/(4S), ... until RK4's φ is as accurate as the GFS's (B5)."""
    torch.set_num_threads(1)
    p = tiny_mlp()
    ref = gfs_sharpness(p, tol=1e-8, rtol=1e-10, atol=1e-12).sharpness
    out = {"reference_phi": ref, "d": p.d, "rk4_gtol": gtol}
    p.counts.grad_evals = p.counts.hvps = 0
    t = time.perf_counter()
    r = gfs_sharpness(p)
    gfs = dict(phi=r.sharpness, rel_err=abs(r.sharpness - ref) / ref, grad_evals=r.grad_evals, hvps=r.hvps,
               wall_s=time.perf_counter() - t)
    out["gfs"] = gfs
    refine = 1
    while True:
        p.counts.grad_evals = p.counts.hvps = 0
        t = time.perf_counter()
        phi, steps = rk4_gfs(p, p.w0, gtol, refine)
        row = dict(phi=phi, rel_err=abs(phi - ref) / ref, grad_evals=p.counts.grad_evals, hvps=p.counts.hvps,
                   wall_s=time.perf_counter() - t, steps=steps, h_times_S=1.0 / refine)
        out[f"rk4_h1/{refine}S"] = row
        if row["rel_err"] <= gfs["rel_err"] or refine >= max_refine:
            break
        refine *= 2
    out["rk4_matched"] = row["rel_err"] <= gfs["rel_err"]
    out["rk4_refine_needed"] = refine
    # an HVP costs about two gradient evaluations: count the GFS's work in gradient-evaluation equivalents
    out["B5_grad_eval_ratio"] = (gfs["grad_evals"] + 2 * gfs["hvps"]) / row["grad_evals"]
    out["B5_wall_ratio"] = gfs["wall_s"] / row["wall_s"]
    out["B5_grad_eval_ratio_vs_h1S"] = (gfs["grad_evals"] + 2 * gfs["hvps"]) / out["rk4_h1/1S"]["grad_evals"]
    out["B5_wall_ratio_vs_h1S"] = gfs["wall_s"] / out["rk4_h1/1S"]["wall_s"]
    return out


def _per_call_s(fn, min_time: float = 0.5, repeats: int = 5) -> float:
    """Median over ``repeats`` batches of the seconds per call of ``fn()`` (batches of ≥ ``min_time`` s)."""
    fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time / repeats:
            break
        n *= 2
    samples = [t / n]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return float(sorted(samples)[len(samples) // 2])


def unit_costs(p, w) -> dict:
    """Wall time of one gradient, one HVP (``problem.hvp``, what the GFS solver's CG and eigensolves pay per
    product: a fresh graph each) and one residual-Jacobian product J v / Jᵀ u (from one
    ``jacobian_operator(w)``, whose construction is one gradient evaluation) at ``w``."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(p.d, generator=gen, dtype=w.dtype)
    r, jv, jtu = p.jacobian_operator(w)
    u = torch.randn(r.numel(), generator=gen, dtype=w.dtype)
    saved = (p.counts.grad_evals, p.counts.hvps, p.counts.jvps)
    out = dict(grad_s=_per_call_s(lambda: p.grad(w)), hvp_s=_per_call_s(lambda: p.hvp(w, v)),
               jv_s=_per_call_s(lambda: jv(v)), jtu_s=_per_call_s(lambda: jtu(u)),
               jacobian_operator_s=_per_call_s(lambda: p.jacobian_operator(w)), residuals=r.numel())
    p.counts.grad_evals, p.counts.hvps, p.counts.jvps = saved
    out["hvp_over_grad"] = out["hvp_s"] / out["grad_s"]
    out["jv_over_grad"] = out["jv_s"] / out["grad_s"]
    out["jtu_over_grad"] = out["jtu_s"] / out["grad_s"]
    # LSQR asks for one J v and one Jᵀ u per iteration: a counted J product costs their mean
    out["jprod_over_grad"] = 0.5 * (out["jv_over_grad"] + out["jtu_over_grad"])
    return out


def run_network(gtol: float = 1e-6, max_refine: int = 8) -> dict:
    """B5 on real data: one GFS evaluation on mlp-digits (n = 20, 10 classes, width 32, d = 2410) against RK4 at
    h = 1/S, 1/(2S), ... until RK4's φ is as accurate as ours or h = 1/(max_refine·S). Work is reported in
    gradient evaluations alone, in gradient-equivalents (HVPs and J products weighted by their measured time
    relative to a gradient at w0) and in wall time."""
    torch.set_num_threads(1)
    name, params = NET
    p = problems.make(name, **params)
    out: dict = {"problem": name, "params": params, "d": p.d, "rk4_gtol": gtol}
    costs = unit_costs(p, p.w0)
    out["unit_costs"] = costs

    def equiv(grads, hvps, jvps):
        return grads + hvps * costs["hvp_over_grad"] + jvps * costs["jprod_over_grad"]

    ref = None
    for tol in (1e-8, 1e-7):  # the tighter one unless it does not converge
        t = time.perf_counter()
        r = gfs_sharpness(p, tol=tol)
        out["reference"] = dict(tol=tol, phi=r.sharpness, error=r.error, converged=r.converged, reason=r.reason,
                                grad_evals=r.grad_evals, hvps=r.hvps, jvps=r.jvps, projection=r.projection,
                                wall_s=time.perf_counter() - t)
        if r.converged and math.isfinite(r.sharpness):
            ref = r.sharpness
            break
    if ref is None:
        raise RuntimeError(f"no converged GFS reference on {name}: {out['reference']}")
    out["reference_phi"] = ref
    r = gfs_sharpness(p)
    gfs = dict(phi=r.sharpness, rel_err=abs(r.sharpness - ref) / ref, reported_error=r.error, converged=r.converged,
               grad_evals=r.grad_evals, hvps=r.hvps, jvps=r.jvps, projection=r.projection, wall_s=r.wall_s)
    gfs["grad_equiv"] = equiv(gfs["grad_evals"], gfs["hvps"], gfs["jvps"])
    out["gfs"] = gfs
    refine, rows = 1, {}
    while True:
        with p.counting() as spent:
            t = time.perf_counter()
            rk = rk4_flow(p, p.w0, gtol, refine)
            wall = time.perf_counter() - t
        row = dict(phi=rk["phi"], rel_err=abs(rk["phi"] - ref) / ref, grad_evals=spent.grad_evals, hvps=spent.hvps,
                   jvps=spent.jvps, wall_s=wall, steps=rk["steps"], reached_gtol=rk["reached_gtol"],
                   h_times_S=1.0 / refine)
        row["grad_equiv"] = equiv(row["grad_evals"], row["hvps"], row["jvps"])
        rows[f"rk4_h1/{refine}S"] = row
        out[f"rk4_h1/{refine}S"] = row
        print(f"  rk4 h = 1/({refine}S): rel err {row['rel_err']:.2e}, {row['grad_evals']} grads, "
              f"{row['wall_s']:.1f} s", flush=True)
        if row["rel_err"] <= gfs["rel_err"] or 2 * refine > max_refine:
            break
        refine *= 2
    out["rk4_matched"] = row["rel_err"] <= gfs["rel_err"]
    out["rk4_refine_needed"] = refine if out["rk4_matched"] else None
    out["rk4_refine_last"] = refine
    # against the RK4 run that matched our accuracy (else the most refined one tried: a bound on the ratio)
    for tag, other in (("", row), ("_vs_h1S", out["rk4_h1/1S"])):
        out[f"B5net_grad_eval_ratio{tag}"] = gfs["grad_evals"] / other["grad_evals"]
        out[f"B5net_grad_equiv_ratio{tag}"] = gfs["grad_equiv"] / other["grad_equiv"]
        out[f"B5net_wall_ratio{tag}"] = gfs["wall_s"] / other["wall_s"]
    return out


def print_tiny(res: dict) -> None:
    print(f"tiny tanh MLP, d = {res['d']}, reference φ = {res['reference_phi']:.10g}")
    print(f"{'method':18s} {'φ rel err':>10s} {'grad evals':>11s} {'HVPs':>6s} {'wall s':>8s}")
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k:18s} {v['rel_err']:10.2e} {v['grad_evals']:11d} {v['hvps']:6d} {v['wall_s']:8.2f}")
    print(f"B5: GFS / matched RK4: work {res['B5_grad_eval_ratio']:.3f} (HVP = 2 grads), wall {res['B5_wall_ratio']:.3f}")


def print_network(res: dict) -> None:
    c, ref = res["unit_costs"], res["reference"]
    print(f"{res['problem']} {res['params']}, d = {res['d']}, {c['residuals']} residuals")
    print(f"reference φ = {res['reference_phi']:.10g} (gfs tol {ref['tol']:g}, converged {ref['converged']}, "
          f"reported error {ref['error']:.2e}, {ref['grad_evals']} grads, {ref['hvps']} HVPs, {ref['jvps']} J products, "
          f"{ref['wall_s']:.1f} s, projection {ref['projection']})")
    print(f"at w0: gradient {1e3 * c['grad_s']:.3f} ms, HVP {1e3 * c['hvp_s']:.3f} ms ({c['hvp_over_grad']:.2f} grads), "
          f"J v {1e3 * c['jv_s']:.3f} ms ({c['jv_over_grad']:.2f}), Jᵀu {1e3 * c['jtu_s']:.3f} ms ({c['jtu_over_grad']:.2f}), "
          f"jacobian_operator {1e3 * c['jacobian_operator_s']:.3f} ms")
    print(f"{'method':14s} {'φ':>14s} {'φ rel err':>10s} {'grad evals':>11s} {'HVPs':>6s} {'J prods':>8s} "
          f"{'grad-equiv':>11s} {'steps':>7s} {'wall s':>8s}")
    for k, v in res.items():
        if isinstance(v, dict) and "rel_err" in v:
            print(f"{k:14s} {v['phi']:14.10g} {v['rel_err']:10.2e} {v['grad_evals']:11d} {v['hvps']:6d} {v['jvps']:8d} "
                  f"{v['grad_equiv']:11.0f} {str(v.get('steps', '')):>7s} {v['wall_s']:8.2f}")
    g = res["gfs"]
    print(f"ours (default tol): reported error {g['reported_error']:.2e} (absolute), measured "
          f"{abs(g['phi'] - res['reference_phi']):.2e}, projection {g['projection']}")
    which = (f"matched RK4 (h = 1/({res['rk4_refine_needed']}S))" if res["rk4_matched"]
             else f"RK4 at h = 1/({res['rk4_refine_last']}S), NOT as accurate as ours (a bound)")
    print(f"B5-net: ours / {which}: grad evals {res['B5net_grad_eval_ratio']:.3f}, "
          f"grad-equivalents {res['B5net_grad_equiv_ratio']:.3f}, wall {res['B5net_wall_ratio']:.3f}")
    print(f"        ours / RK4 at h = 1/S: grad evals {res['B5net_grad_eval_ratio_vs_h1S']:.3f}, "
          f"grad-equivalents {res['B5net_grad_equiv_ratio_vs_h1S']:.3f}, wall {res['B5net_wall_ratio_vs_h1S']:.3f}")


def run_architectures(names=None, integrators=("dopri", "rkc")) -> list[dict]:
    """Issue 16's target: one φ at w0 per architecture (the sizes of ``rodflow gfs --network``), at the default
    tol 1e-4, per integrator ("rkc" is the checked pair of solves), against a tight reference (tol 1e-8, DOPRI);
    work in gradient-equivalents (HVPs and J products weighted by their measured time at w0)."""
    from rodflow.commands.gfs import NETWORK_DEFAULTS, NETWORK_GFS

    torch.set_num_threads(1)
    rows = []
    for name in names or [n for n in NETWORK_DEFAULTS if n != "mlp-digits"]:
        params = NETWORK_DEFAULTS[name]
        p = problems.make(name, **params)
        c = unit_costs(p, p.w0)
        # the reference: tol 1e-8 with the network's own integrator at rtol 1e-10 (a DOPRI reference on the
        # ResNet's algebraically slow flow would take ~10^6 gradients)
        ref = gfs_sharpness(p, tol=1e-8, rtol=1e-10, max_grad_evals=1_000_000, **NETWORK_GFS.get(name, {}))
        for integ in integrators:
            r = gfs_sharpness(p, integrator=integ, max_grad_evals=200_000)
            eq = r.grad_evals + r.hvps * c["hvp_over_grad"] + r.jvps * c["jprod_over_grad"]
            row = dict(problem=name, params=params, d=p.d, residuals=c["residuals"], integrator=integ,
                       phi=r.sharpness, reference=ref.sharpness, reference_error=ref.error,
                       rel_err=abs(r.sharpness - ref.sharpness) / ref.sharpness, reported_rel=r.error / r.sharpness,
                       grad_evals=r.grad_evals, jvps=r.jvps, hvps=r.hvps, grad_equiv=eq, wall_s=r.wall_s,
                       hvp_over_grad=c["hvp_over_grad"], jprod_over_grad=c["jprod_over_grad"], reason=r.reason)
            rows.append(row)
            print(f"{name:20s} {integ:6s} d={p.d:5d} m={c['residuals']:4d} φ={r.sharpness:.8g} (ref {ref.sharpness:.8g}"
                  f" ± {ref.error:.1e}) rel err {row['rel_err']:.1e} reported {row['reported_rel']:.1e}; "
                  f"{r.grad_evals} grads + {r.jvps} J ({c['jprod_over_grad']:.2f}) + {r.hvps} HVPs "
                  f"({c['hvp_over_grad']:.2f}) = {eq:.0f} grad-equiv, {r.wall_s:.1f} s", flush=True)
    return rows


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "tiny"):
        print_tiny(run())
    if which in ("all", "network"):
        if which == "all":
            print()
        print_network(run_network())
    if which in ("all", "architectures"):
        run_architectures()
