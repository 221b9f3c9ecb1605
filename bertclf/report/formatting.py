"""How numbers are written in report tables, tiles and captions (also registered as Jinja2 filters)."""
from __future__ import annotations

from bertclf.report.data import finite


def fmt_int(x) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else ("-" if x is None else str(x))


def fmt_num(x, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def fmt_signed(x) -> str:
    return ("+" if x > 0 else "-") + fmt_num(abs(x), 4)


def fmt_secs(s) -> str:
    if not finite(s):
        return "-"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_cell(v) -> str:
    """A value of the comparison table."""
    if isinstance(v, float):
        return fmt_num(v, 4)
    if isinstance(v, int) and not isinstance(v, bool):
        return fmt_int(v)
    return "-" if v is None else str(v)


def split_name(split: str | None) -> str:
    return {"valid": "validation", "test": "test"}.get(split, str(split))
