"""Serving: `bertclf serve` under load."""
