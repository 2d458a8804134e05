"""Memory bandwidth: sysbench memory in the instance.

An application study: shown in the report's applications section, against the bare host
(harness.report.apps draws its chart and its table)."""

from __future__ import annotations

from harness.report.presentation import App, Presentation

PRESENTATION: Presentation = Presentation(
    "mem", "Memory bandwidth", "", rank=150,
    app=App("Memory bandwidth: sysbench memory in the instance", "mem.bw",
        from_host=False))
