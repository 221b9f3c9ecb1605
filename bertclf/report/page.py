"""HTML pages from the Jinja2 templates in templates/ (autoescaped; the CSS inlined, the PNGs as data URIs), so
a page loads nothing from anywhere and can be mailed or archived as one file."""
from __future__ import annotations

import base64
import time
from functools import lru_cache
from pathlib import PurePath

from bertclf.report.compare import HIGHER_IS_BETTER, LOWER_IS_BETTER
from bertclf.report.data import Run, finite
from bertclf.report.formatting import fmt_cell, fmt_int, fmt_num, fmt_secs, fmt_signed, split_name
from bertclf.report.plots import Plot


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("bertclf.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    # tojson escapes <, >, & and ' itself, so the JSON is safe inside <script>; allow_nan=False: JSON has no NaN
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "default": str, "allow_nan": False}
    env.filters.update(fmt_int=fmt_int, fmt_num=fmt_num, fmt_secs=fmt_secs, fmt_signed=fmt_signed, fmt_cell=fmt_cell,
                       split_name=split_name, stem=lambda f: PurePath(f).stem, png_data_uri=png_data_uri)
    env.globals.update(zip=zip, pick=lambda figs, *files: [figs[f] for f in files if f in figs])
    return env


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render(template: str, title: str, data: dict, tool: str = "report", **context) -> str:
    """One page: `data` goes into the page's report-data element as JSON."""
    return environment().get_template(template).render(
        title=title, data=data, tool=tool, written=time.strftime("%Y-%m-%d %H:%M:%S %Z"), **context)


def _notes(data: dict, more: list[str] = ()) -> list[str]:
    return list(data["notes"]) + list(more) + [f"section {k} failed: {v}" for k, v in data["errors"].items()]


def run_tiles(run: Run, data: dict) -> list[dict]:
    """The headline numbers above a run's plots: {k, v, d}."""
    card = run.card or {}
    metrics = card.get("metrics") or {}
    tr = card.get("training") or {}
    tiles = []
    for split in ("test", "valid"):
        rep = metrics.get(split)
        if isinstance(rep, dict) and finite(rep.get("accuracy")):
            tiles.append({"k": f"{split_name(split)} accuracy", "v": f"{rep['accuracy']:.4f}",
                          "d": f"macro-F1 {fmt_num(rep.get('macro_f1'), 4)} · {fmt_int(rep.get('n'))} rows"})
    if run.baseline and finite(run.baseline.get("accuracy")):
        tiles.append({"k": "TF-IDF baseline", "v": f"{run.baseline['accuracy']:.4f}",
                      "d": f"macro-F1 {fmt_num(run.baseline.get('macro_f1'), 4)}"})
    r = data.get("reliability")
    if r:
        raw = data.get("reliability_raw")
        tiles.append({"k": f"ECE ({split_name(data['prediction_split'])})", "v": f"{r['ece']:.4f}",
                      "d": (f"before calibration {raw['ece']:.4f} · " if raw else "")
                      + f"{r['n_bins']} bins · mean confidence {r['mean_confidence']:.3f}"})
    if finite(tr.get("wall_time_s")):
        sps = f"{tr['samples_per_s']:,.0f} samples/s · " if finite(tr.get("samples_per_s")) else ""
        tiles.append({"k": "wall time", "v": fmt_secs(tr["wall_time_s"]), "d": f"{sps}{tr.get('device', '')}"})
    return tiles


def run_page(run: Run, data: dict, figs: list[Plot]) -> str:
    metrics = (run.card or {}).get("metrics") or {}
    cm = data.get("confusion")
    rep = metrics.get(cm["split"]) if cm else None
    per_class = rep if isinstance(rep, dict) and rep.get("per_class") else None
    return render("run.html", f"bertclf run report: {run.name}", data, run_dir=str(run.dir),
                  tiles=run_tiles(run, data), notes=_notes(data), figs={f.file: f for f in figs}, confusion=cm,
                  per_class=per_class, per_label=data.get("per_label"), reliability=data.get("reliability"), summary=data.get("summary"))


def compare_page(runs: list[Run], data: dict, figs: list[Plot]) -> str:
    names = data["names"]
    table = []
    for row in data["table"]:
        mono = " mono" if "sha256" in row["key"] else ""
        diff = " diff" if row["differ"] and row["group"] in ("recipe", "data") else ""
        dl, delta_cls = row["delta"], ""
        if dl is not None and dl != 0 and row["key"] in HIGHER_IS_BETTER | LOWER_IS_BETTER:
            delta_cls = "pos" if (dl > 0) == (row["key"] in HIGHER_IS_BETTER) else "neg"
        table.append({**row, "cls": f"num{mono}{diff}", "delta_cls": delta_cls})
    per_run = []
    for n, d in zip(names, data["per_run"]):
        per_run += [f"{n}: {x}" for x in d["notes"]] + [f"{n}: section {k} failed: {v}" for k, v in d["errors"].items()]
    confusions = [(n, d["confusion"]) for n, d in zip(names, data["per_run"]) if d.get("confusion")]
    return render("compare.html", f"bertclf comparison: {' vs '.join(names)}", data,
                  run_dirs=[str(r.dir) for r in runs], names=names, two=len(runs) == 2, table=table, notes=_notes(data, per_run),
                  figs={f.file: f for f in figs}, confusions=confusions)


def fallback_page(runs: list[Run], data: dict, figs: list[Plot]) -> str:
    """Every plot and the notes, for when a page cannot be built from odd values in a card."""
    return render("fallback.html", f"bertclf report: {', '.join(r.name for r in runs)}", data,
                  notes=_notes(data), figs={f.file: f for f in figs})
