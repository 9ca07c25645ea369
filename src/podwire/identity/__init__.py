"""identity room."""
