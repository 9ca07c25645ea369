"""telemetry room."""
