"""The web layer: REST API and HTMX dashboard on top of the controller (never the other way)."""
