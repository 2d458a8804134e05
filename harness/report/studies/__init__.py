"""Each study's chapter of the report: its charts, its summary table and caption, beside
one another, one module per study. A module's PRESENTATION is found through the entry-point
group "cvbench.reports" (see harness.report.presentation)."""
