"""A search's page, DIR/report.html (one self-contained file): the trials over time, how much each parameter
mattered (Optuna's fANOVA importance), every trial, and the best beside the defaults."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from bertclf.io.files import atomic_file

REPORT_FILE = "report.html"
MIN_FOR_IMPORTANCE = 3  # complete trials before importances are estimated at all (few trials: noise, said so)


def trial_rows(study) -> list[dict]:
    start = min((t.datetime_start for t in study.trials if t.datetime_start), default=None)
    rows = []
    for t in study.trials:
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "defaults": bool(t.user_attrs.get("defaults")),
                     "score": t.value, "pruned_at": last, "last_validation": t.intermediate_values.get(last),
                     "params": t.params, "test_score": t.user_attrs.get("test_score"),
                     "minutes": None if not (t.datetime_complete and start)
                     else (t.datetime_complete - start).total_seconds() / 60,
                     "seconds": None if not (t.datetime_complete and t.datetime_start)
                     else (t.datetime_complete - t.datetime_start).total_seconds()})
    return rows


def importances(study) -> tuple[dict, str]:
    """({parameter: share of the score's variance it explains}, a note); {} when too few trials."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < MIN_FOR_IMPORTANCE:
        return {}, f"parameter importance needs {MIN_FOR_IMPORTANCE} complete trials, there are {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. every trial scored the same: said below by the empty table
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return {}, f"parameter importance not estimated: {e}"
    found = {k: v for k, v in found.items() if math.isfinite(v)}
    if not found:
        return {}, "parameter importance not estimated: the trials' scores do not vary"
    return dict(found), (f"fANOVA over {len(complete)} complete trials: with few trials a rough guide, not a "
                         f"measurement")


def plot_trials(rows: list[dict], metric: str):
    from bertclf.report.plots import COLORS, Plot, _figure, png_bytes

    fig, (ax,) = _figure(9.6, 3.6)
    done = [r for r in rows if r["state"] == "complete" and r["minutes"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["minutes"] is not None and r["last_validation"] is not None]
    ax.scatter([r["minutes"] for r in done], [r["score"] for r in done], color=COLORS[0], s=22, label="complete",
               zorder=3)
    ax.scatter([r["minutes"] for r in pruned], [r["last_validation"] for r in pruned], marker="x", color=COLORS[3],
               s=26, label="pruned (its last validation)", zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(done, key=lambda r: r["minutes"]):
        best = r["score"] if best is None else max(best, r["score"])
        xs.append(r["minutes"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color=COLORS[2], lw=1.3, label="best so far")
    defaults = next((r for r in done if r["defaults"]), None)
    if defaults:
        ax.axhline(defaults["score"], color="#888", ls="--", lw=1, label="defaults")
    ax.set(xlabel="minutes since the first trial started", ylabel=f"validation {metric}")
    ax.legend(loc="best", fontsize=8)
    return Plot("trials.png", "Trials over time", f"each trial's validation {metric} when it finished", png_bytes(fig))


def plot_slices(rows: list[dict], metric: str):
    """The validation score against each parameter's value, one panel per parameter (complete trials)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bertclf.report.plots import COLORS, Plot, png_bytes

    done = [r for r in rows if r["state"] == "complete"]
    names = sorted({k for r in done for k in r["params"]})
    if not done or not names:
        return None
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.3 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [(r["params"][name], r["score"]) for r in done if name in r["params"]]
        xs = [str(x) if isinstance(x, str) else x for x, _ in pts]
        ax.scatter(xs, [y for _, y in pts], color=COLORS[0], s=16)
        if name == "lr":
            ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(True, alpha=0.3)
    return Plot("slices.png", f"Validation {metric} by parameter", "each complete trial's score against each of "
                "its parameters", png_bytes(fig))


def plot_importance(found: dict):
    from bertclf.report.plots import COLORS, Plot, _figure, png_bytes

    if not found:
        return None
    names = list(found)[::-1]
    fig, (ax,) = _figure(6.4, 0.5 + 0.38 * len(names))
    ax.barh(names, [found[n] for n in names], color=COLORS[0])
    ax.set(xlabel="share of the score's variance (fANOVA)")
    return Plot("importance.png", "Parameter importance", "how much of the variation in the validation score each "
                "parameter explains", png_bytes(fig))


def write_tune_report(study, out: Path, info: dict) -> Path:
    from bertclf.report.page import render
    from bertclf.report.plots import plot_style

    rows = trial_rows(study)
    found, note = importances(study)
    with plot_style():
        figs = [f for f in (plot_trials(rows, info["metric"]), plot_slices(rows, info["metric"]),
                            plot_importance(found)) if f is not None]
    data = {"bertclf_tune": 1, "best": info, "trials": rows, "importance": found}
    page = render("tune.html", f"bertclf tune: {out.resolve().name}", data, tool="tune", info=info, trials=rows,
                  importance=found, notes=[note], figs=figs, out=str(out))
    path = out / REPORT_FILE
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
