"""Run reports: plots and one self-contained HTML page per training run, or a page comparing runs.

    bertclf report DIR              -> DIR/report.html, with its PNGs and plotted numbers in DIR/report/
    bertclf report A B              -> A/compare-<B's folder name>.html (+ A/compare-<B>/), A and B side by side
    bertclf report A B --out F.html -> F.html (+ F/ beside it)

The page holds, for one run: training loss and accuracy by step; the validation metrics at each evaluation with
the best checkpoint marked; the confusion matrix (test set if the run had one, else validation); the score
histograms per true class; a reliability (calibration) curve with its expected calibration error (ECE, 15
equal-width confidence bins); accuracy by text length in tokens; and a summary table (data with SHA-256
checksums, model, recipe, device, wall time, throughput, metrics, the TF-IDF baseline when one is known).

What it reads from a run directory (all written by `bertclf train`): bertclf.json (the model card),
train_log.jsonl (every logged training window and validation), eval_predictions.npz (the final model's
validation/test probabilities) and, when `bertclf baseline --out DIR` stored one, baseline.json. A run that
stopped early (log only, no card yet) still gets the sections its files allow; a missing part is named on
the page, never an error. A directory with neither bertclf.json nor train_log.jsonl raises UserError.

Everything is written atomically: the asset folder (PNGs + data.json, the exact series each plot draws) via
files.atomic_dir, then the HTML via files.atomic_file. The HTML embeds the PNGs as base64 data URIs, its CSS
inline and the same numbers as data.json in a <script type="application/json" id="report-data"> element: it
loads nothing from anywhere and can be mailed or archived as one file.

The package, one concept per module: data (reading a run directory), numbers (what each section shows, JSON-ready),
compare (the side-by-side table), plots (matplotlib), page (HTML from the Jinja2 templates in templates/, CSS in
templates/report.css), writer (atomic output).
"""
from bertclf.report.data import Run, load_run
from bertclf.report.numbers import curves, length_buckets, reliability, run_data, score_histograms
from bertclf.report.plots import Plot, plot_reliability, plot_training
from bertclf.report.writer import write_report

__all__ = ["Plot", "Run", "curves", "length_buckets", "load_run", "plot_reliability", "plot_training", "reliability",
           "run_data", "score_histograms", "write_report"]
