"""views room."""
