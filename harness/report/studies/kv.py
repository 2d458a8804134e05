"""Key-value store: redis under redis-benchmark.

An application study: shown in the report's applications section, against the bare host
(harness.report.apps draws its chart and its table)."""

from __future__ import annotations

from harness.report.presentation import App, Presentation

PRESENTATION: Presentation = Presentation(
    "kv", "Key-value store", "", rank=120,
    app=App("Key-value store: redis under redis-benchmark", "kv.ops", "kv.lat_p99"))
