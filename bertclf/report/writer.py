"""Writing a report: the asset folder (PNGs + data.json, the exact series each plot draws) atomically, then the
HTML page atomically."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.io.files import atomic_dir, atomic_file, check_writable
from bertclf.report.compare import MAX_COMPARE, compare_data
from bertclf.report.data import Run, load_run
from bertclf.report.numbers import run_data
from bertclf.report.page import compare_page, fallback_page, run_page
from bertclf.report.plots import compare_figures, matplotlib_ok, plot_style, run_figures

REPORT_FILE = "report.html"
DATA_FILE = "data.json"


def default_out(runs: list[Run]) -> Path:
    """DIR/report.html for one run; A/compare-<B>.html (A/compare-<B>-<C>.html, ...) for several."""
    if len(runs) == 1:
        return runs[0].dir / REPORT_FILE
    return runs[0].dir / ("compare-" + "-".join(_safe(r.name) for r in runs[1:]) + ".html")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def assets_dir(html_path: Path) -> Path:
    """Where the PNGs and data.json go: the HTML path without its suffix (DIR/report.html -> DIR/report/)."""
    if html_path.suffix.lower() in (".html", ".htm"):
        return html_path.with_suffix("")
    return html_path.with_name(html_path.name + "_files")


def plain(x):
    """JSON-ready: numpy scalars to Python, NaN/inf to None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def is_report_folder(d: Path) -> bool:
    """May the asset folder `d` be replaced: absent, empty, or one an earlier report wrote."""
    if not d.exists():
        return True
    if not d.is_dir():
        return False
    if not any(d.iterdir()):
        return True
    try:
        return "bertclf_report" in json.loads((d / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def output_paths(runs: list[Run], out: str | None) -> tuple[Path, Path]:
    """(HTML file, asset folder), both checked writable before any plot is drawn."""
    if out:
        html_path = Path(out).expanduser()
        if html_path.is_dir():
            html_path = html_path / default_out(runs).name
    else:
        html_path = default_out(runs)
    html_path = html_path.resolve()
    check_writable(html_path)
    assets = assets_dir(html_path)
    if not is_report_folder(assets):
        raise UserError(f"{assets}: exists and is not a bertclf report folder (the report's PNGs go there); "
                        f"choose another --out")
    return html_path, assets


def write_page(html_path: Path, assets: Path, page: str, data: dict, pngs: dict[str, bytes]) -> None:
    """The asset folder (PNGs, data.json) then the page, each atomically; UserError when it cannot be written."""
    try:
        with atomic_dir(assets) as tmp:
            for name, png in pngs.items():
                (tmp / name).write_bytes(png)
            (tmp / DATA_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n",
                                         encoding="utf-8")
        with atomic_file(html_path, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as e:
        raise UserError(f"{html_path}: cannot write the report ({e.strerror or e}); give --out FILE in a writable "
                        f"place") from None


def write_report(run_dirs: list[str], out: str | None = None) -> str:
    """Write the report page for one run directory, or a comparison page for several; return the HTML's path.

    One run: DIR/report.html, its PNGs and data.json (the plotted series) in DIR/report/.
    Several runs (A B ...): A/compare-<B>.html (A/compare-<B>-<C>.html for three) and A/compare-<B>/.
    out: the HTML file instead (an existing directory: the default file name inside it); the asset folder is
    its path without the .html suffix. An existing asset folder is replaced only when an earlier report wrote it.
    Raises UserError (one line) for a directory that is not a bertclf run, or where nothing can be written.
    A plot that fails is named on the page instead of failing the report.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise UserError("report: give one run directory, or several to compare")
    if len(run_dirs) > MAX_COMPARE:
        raise UserError(f"report: at most {MAX_COMPARE} runs on one page, got {len(run_dirs)}")
    runs = [load_run(d) for d in run_dirs]
    html_path, assets = output_paths(runs, out)
    matplotlib_ok()
    one = len(runs) == 1
    data = run_data(runs[0]) if one else compare_data(runs)
    with plot_style():
        figs = run_figures(data) if one else compare_figures(data)
    data["figures"] = [f.file for f in figs]
    data = plain(data)
    try:
        page = run_page(runs[0], data, figs) if one else compare_page(runs, data, figs)
    except Exception as e:  # noqa: BLE001 - odd values in a card: still a page with every plot
        data["errors"]["page"] = f"{type(e).__name__}: {e}"
        page = fallback_page(runs, data, figs)
    write_page(html_path, assets, page, data, {f.file: f.png for f in figs})
    return str(html_path)
