"""Reports: tables (pandas), charts (matplotlib), Markdown/HTML rendering."""
