"""tracker room."""
