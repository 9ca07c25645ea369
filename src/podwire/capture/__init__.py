"""capture room."""
