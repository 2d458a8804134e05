"""CPU: sysbench cpu in the instance.

An application study: shown in the report's applications section, against the bare host
(harness.report.apps draws its chart and its table)."""

from __future__ import annotations

from harness.report.presentation import App, Presentation

PRESENTATION: Presentation = Presentation(
    "cpu", "CPU", "", rank=140,
    app=App("CPU: sysbench cpu in the instance", "cpu.events", from_host=False))
