"""Readers of a rendered HTML page (the run report, the audit page): its embedded data and its tables."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its plotted numbers"
    return json.loads(m.group(1))


class Tables(HTMLParser):
    """Cell texts of every <table id=...> on a page: {id: [[cell, ...], ...]}."""

    def __init__(self):
        super().__init__()
        self.tables, self.current, self.row, self.cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.current = a.get("id")
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.row = []
            self.tables[self.current].append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(self.cell.strip())
            self.cell = None
        elif tag == "table":
            self.current, self.row = None, None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def tables(html: str) -> dict:
    p = Tables()
    p.feed(html)
    return p.tables
