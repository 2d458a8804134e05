"""Database: PostgreSQL under pgbench.

An application study: shown in the report's applications section, against the bare host
(harness.report.apps draws its chart and its table)."""

from __future__ import annotations

from harness.report.presentation import App, Presentation

PRESENTATION: Presentation = Presentation(
    "db", "Database", "", rank=130,
    app=App("Database: PostgreSQL under pgbench", "db.tps", "db.lat_p99"))
