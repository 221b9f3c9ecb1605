"""The report's plots: matplotlib on an Agg canvas (never pyplot's global state), each drawn only from the
numbers in bertclf.report.numbers' dicts, returned as PNG bytes."""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np

from bertclf.errors import UserError
from bertclf.report.formatting import split_name as _split_name
from bertclf.report.numbers import N_CALIBRATION_BINS

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Plot:
    file: str       # PNG name in the asset folder
    title: str
    caption: str
    png: bytes


def _figure(w: float = 6.4, h: float = 3.6, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a label's glyphs missing from the font
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_training(c: dict):
    """Training loss and accuracy by step (one point per logged window), best checkpoint dashed."""
    fig, (ax_loss, ax_acc) = _figure(9.6, 3.4, ncols=2)
    t = c["train"]
    ax_loss.plot(t["step"], t["loss"], marker="o", ms=2.5, lw=1.3, color=COLORS[0], label="training loss")
    ax_loss.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    ax_acc.plot(t["step"], t["acc"], marker="o", ms=2.5, lw=1.3, color=COLORS[0], label="training (logged window)")
    v = c["valid"]
    if v["step"]:
        ax_acc.plot(v["step"], v["accuracy"], marker="s", ms=4, lw=1.3, color=COLORS[1], label="validation")
    ax_acc.set(title="accuracy", xlabel="step", ylabel="accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    if c.get("best_step") is not None:
        for ax in (ax_loss, ax_acc):
            ax.axvline(c["best_step"], ls="--", lw=1, color="0.4")
    return fig


def plot_validation(c: dict):
    """Validation accuracy and macro-F1 at each evaluation; the best checkpoint starred."""
    fig, (ax,) = _figure()
    v = c["valid"]
    ax.plot(v["step"], v["accuracy"], marker="o", lw=1.5, color=COLORS[0], label="accuracy")
    if any(x is not None for x in v["macro_f1"]):
        ax.plot(v["step"], [x if x is not None else np.nan for x in v["macro_f1"]], marker="o", lw=1.2, ls=":",
                color=COLORS[2], label="macro-F1")
    best = c.get("best_step")
    if best in v["step"]:
        i = v["step"].index(best)
        ax.plot([best], [v["accuracy"][i]], marker="*", ms=16, color=COLORS[3], ls="none",
                label=f"best checkpoint (step {best}: {v['accuracy'][i]:.4f})")
    vals = [x for x in v["accuracy"] + v["macro_f1"] if x is not None]
    lo, hi = min(vals), max(vals)
    pad = max(0.05, (0.1 - (hi - lo)) / 2)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.01)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set(title="validation by evaluation", xlabel="step", ylabel="score")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_confusion(cm: dict):
    m = np.asarray(cm["matrix"], dtype=np.int64)
    k = len(m)
    size = min(7.5, 3.2 + 0.45 * k)
    fig, (ax,) = _figure(size + 1.2, size)
    ax.grid(False)
    row = m.sum(1, keepdims=True)
    share = np.divide(m, row, out=np.zeros(m.shape), where=row > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    names = [_plot_text(n, f"class {i}") for i, n in enumerate(cm["labels"])]
    names = [n if len(n) <= 16 else n[:15] + "…" for n in names]
    ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({_split_name(cm['split'])}, {m.sum():,} rows)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i, j]:,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8 if k < 8 else 6,
                        color="white" if share[i, j] > 0.6 else "black")
    return fig


def plot_histograms(h: dict, split: str):
    fig, (ax,) = _figure()
    edges = np.asarray(h["edges"])
    for i, (lab, counts) in enumerate(h["counts"].items()):
        ax.stairs(counts, edges, lw=1.6, color=COLORS[i % len(COLORS)], label=f"true {_plot_text(lab, f'class {i}')}",
                  fill=len(h["counts"]) <= 3, alpha=0.35 if len(h["counts"]) <= 3 else 1)
        ax.stairs(counts, edges, lw=1.6, color=COLORS[i % len(COLORS)])
    ax.set(title=f"scores by true class ({_split_name(split)})", xlabel=h["score"], ylabel="rows", xlim=(0, 1))
    ax.legend(fontsize=8, ncols=1 if len(h["counts"]) <= 6 else 2)
    return fig


def plot_reliability(items: list[tuple[str, dict]], title: str):
    """Reliability curves: accuracy against mean confidence per non-empty bin, the diagonal is perfect."""
    fig, (ax,) = _figure(5.0, 4.2)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="perfectly calibrated")
    for i, (label, r) in enumerate(items):
        pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=4, lw=1.5, color=COLORS[i % len(COLORS)], label=f"{label} ECE {r['ece']:.4f}")
    if len(items) == 1:  # rows per bin, for a sense of how much each point weighs
        r = items[0][1]
        lo = np.asarray(r["edges"][:-1])
        w = 1 / r["n_bins"]
        share = np.asarray(r["count"]) / max(r["n"], 1)
        ax.bar(lo + w / 2, share, width=w * 0.9, color="0.85", zorder=0, label="share of rows per bin")
    ax.set(title=title, xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_length(lb: dict, split: str):
    fig, (ax,) = _figure()
    b = lb["buckets"]
    x = np.arange(len(b))
    bars = ax.bar(x, [v["accuracy"] for v in b], color=COLORS[0], alpha=0.8)
    for rect, v in zip(bars, b):
        ax.annotate(f"{v['accuracy']:.3f}\nn={v['n']:,}", (rect.get_x() + rect.get_width() / 2, 0), ha="center",
                    va="bottom", fontsize=7, color="white", xytext=(0, 3), textcoords="offset points")
    ax.axhline(lb["accuracy_overall"], ls="--", lw=1, color="0.4", label=f"overall {lb['accuracy_overall']:.4f}")
    ax.set_xticks(x, [v["label"] for v in b])
    ax.set(title=f"accuracy by length ({_split_name(split)})", xlabel="tokens per text", ylabel="accuracy",
           ylim=(0, 1.1))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_compare_training(items: list[tuple[str, dict]]):
    """Training loss, training accuracy and validation accuracy of several runs, by epoch (comparable across
    batch sizes, unlike steps)."""
    fig, axes = _figure(12.0, 3.4, ncols=3)
    for i, (name, c) in enumerate(items):
        col = COLORS[i % len(COLORS)]
        t, v = c["train"], c["valid"]
        axes[0].plot(t["epoch"], t["loss"], lw=1.3, marker="o", ms=2, color=col, label=name)
        axes[1].plot(t["epoch"], t["acc"], lw=1.3, marker="o", ms=2, color=col, label=name)
        axes[2].plot(v["epoch"], v["accuracy"], lw=1.3, marker="s", ms=4, color=col, label=name)
        if c.get("best_step") in v["step"]:
            j = v["step"].index(c["best_step"])
            axes[2].plot([v["epoch"][j]], [v["accuracy"][j]], marker="*", ms=14, color=col, ls="none")
    for ax, title in zip(axes, ("training loss", "training accuracy", "validation accuracy (best starred)")):
        ax.set(title=title, xlabel="epoch")
        ax.legend(fontsize=8)
    return fig


def plot_compare_length(items: list[tuple[str, dict]]):
    """Accuracy by length bucket, one bar per run in each bucket."""
    fig, (ax,) = _figure()
    order: list[str] = []
    for _, lb in items:
        order += [b["label"] for b in lb["buckets"] if b["label"] not in order]
    order.sort(key=lambda lab: (lab.endswith("(cut)"), int(re.match(r"\d+", lab).group())))
    x = np.arange(len(order))
    w = 0.8 / len(items)
    for i, (name, lb) in enumerate(items):
        by = {b["label"]: b["accuracy"] for b in lb["buckets"]}
        col = COLORS[i % len(COLORS)]
        ax.bar(x - 0.4 + w * (i + 0.5), [by.get(lab, np.nan) for lab in order], width=w * 0.95, color=col,
               alpha=0.85, label=name)
        ax.axhline(lb["accuracy_overall"], ls="--", lw=1, color=col)
    ax.set_xticks(x, order)
    ax.set(title="accuracy by length", xlabel="tokens per text", ylabel="accuracy", ylim=(0, 1.1))
    ax.legend(loc="upper right", fontsize=8, ncols=min(len(items), 3))
    return fig


_FONTS: tuple | None = None


def _fonts() -> tuple[list[str], list]:
    """(font families for the plots: DejaVu Sans, then an installed CJK font if any, e.g. from the Debian
    package fonts-noto-cjk or fonts-nanum; their FT2Font objects, to test which characters they can draw)."""
    global _FONTS
    if _FONTS is None:
        from matplotlib import font_manager

        installed = sorted({f.name for f in font_manager.fontManager.ttflist})
        extra = [n for n in installed if re.search(r"CJK|Nanum|Noto Sans (KR|JP|SC|TC)|Malgun|Unifont", n)][:2]
        families = ["DejaVu Sans", *extra]
        fonts = []
        for fam in families:
            try:
                fonts.append(font_manager.get_font(font_manager.findfont(
                    font_manager.FontProperties(family=fam), fallback_to_default=True)))
            except Exception:  # noqa: BLE001
                pass
        _FONTS = (families, fonts)
    return _FONTS


def _plot_text(text: str, fallback: str) -> str:
    """`text` if the plot fonts can draw every character of it, else `fallback` (the page's tables show the
    real names; Agg would draw boxes)."""
    _, fonts = _fonts()
    try:
        ok = all(c.isspace() or any(f.get_char_index(ord(c)) for f in fonts) for c in str(text))
    except Exception:  # noqa: BLE001
        ok = True
    return str(text) if ok else fallback


def plot_style():
    """The rc settings every report plot is drawn under (font fallback for non-Latin labels)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": _fonts()[0]})


def matplotlib_ok():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("report: matplotlib is not installed; pip install matplotlib") from None


def run_figures(data: dict) -> list[Plot]:
    """The single-run plots, drawn from `data` (run_data's dict) only."""
    figs: list[Plot] = []

    def add(file, title, caption, make):
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001
            data["errors"][file] = f"{type(e).__name__}: {e}"
            return
        figs.append(Plot(file, title, caption, png_bytes(fig)))

    c, split = data.get("curves"), data.get("prediction_split")
    if c and c["train"]["step"]:
        add("training.png", "Training", f"Loss and accuracy of each logged window ({len(c['train']['step'])} points, "
            "as in train_log.jsonl); validation accuracy in orange; dashed: the best checkpoint.",
            lambda: plot_training(c))
    if c and c["valid"]["step"]:
        add("validation.png", "Validation", f"{len(c['valid']['step'])} evaluation(s); the star marks the "
            f"checkpoint kept as the final model (step {c.get('best_step')}).", lambda: plot_validation(c))
    cm = data.get("confusion")
    if cm:
        add("confusion.png", f"Confusion matrix ({_split_name(cm['split'])})", "Rows: true class; columns: "
            "predicted; each cell: rows and share of its true class.", lambda: plot_confusion(cm))
    if data.get("histograms"):
        add("scores.png", f"Scores by true class ({_split_name(split)})", "How far apart the classes' scores lie: "
            "overlap is where errors come from.", lambda: plot_histograms(data["histograms"], split))
    r, raw = data.get("reliability"), data.get("reliability_raw")
    if r:
        curves = [(_split_name(split), r)] if not raw else [
            ("before calibration", raw), (f"after (temperature {raw['temperature']:.3f})", r)]
        add("calibration.png", f"Calibration ({_split_name(split)}): ECE {r['ece']:.4f}"
            + (f" (before calibration {raw['ece']:.4f})" if raw else ""),
            f"Accuracy against confidence in {r['n_bins']} equal-width bins; on the diagonal the model's confidence "
            f"is its accuracy. ECE (expected calibration error) = {r['ece']:.4f}: the row-weighted mean gap."
            + (f" Before calibration (the temperature fitted on the validation rows, folded into the classifier) "
               f"it was {raw['ece']:.4f}." if raw else ""),
            lambda: plot_reliability(curves, f"reliability ({_split_name(split)})"))
    lb = data.get("length")
    if lb and lb["buckets"]:
        add("length.png", f"Accuracy by length ({_split_name(split)})", "Texts bucketed by tokens (special tokens "
            "included); n: rows per bucket.", lambda: plot_length(lb, split))
    return figs


def compare_figures(data: dict) -> list[Plot]:
    figs: list[Plot] = []
    names = [_plot_text(n, f"run {i + 1}") for i, n in enumerate(data["names"])]
    per = data["per_run"]

    def add(file, title, caption, make):
        try:
            figs.append(Plot(file, title, caption, png_bytes(make())))
        except Exception as e:  # noqa: BLE001
            data["errors"][file] = f"{type(e).__name__}: {e}"

    cs = [(n, d["curves"]) for n, d in zip(names, per) if d.get("curves") and d["curves"]["train"]["step"]]
    if cs:
        add("training.png", "Training curves", "By epoch, so runs with different batch sizes line up; "
            "stars: each run's best checkpoint.", lambda: plot_compare_training(cs))
    rs = [(f"{n} ({_split_name(d['prediction_split'])})", d["reliability"]) for n, d in zip(names, per)
          if d.get("reliability")]
    if rs:
        add("calibration.png", "Calibration", f"Accuracy against confidence, {N_CALIBRATION_BINS} bins; ECE per "
            "run in the legend.", lambda: plot_reliability(rs, "reliability"))
    ls = [(f"{n} ({_split_name(d['prediction_split'])})", d["length"]) for n, d in zip(names, per)
          if d.get("length") and d["length"]["buckets"]]
    if ls:
        add("length.png", "Accuracy by length", "Rows bucketed by tokens (special tokens included); the dashed "
            "lines: each run's overall accuracy.", lambda: plot_compare_length(ls))
    return figs


