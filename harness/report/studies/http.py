"""HTTP server: nginx under wrk.

An application study: shown in the report's applications section, against the bare host
(harness.report.apps draws its chart and its table)."""

from __future__ import annotations

from harness.report.presentation import App, Presentation

PRESENTATION: Presentation = Presentation(
    "http", "HTTP server", "", rank=110,
    app=App("HTTP server: nginx under wrk", "http.rps", "http.lat_p99"))
