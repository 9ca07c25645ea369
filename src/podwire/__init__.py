"""podwire: every pod TCP connection as workload-labelled OpenTelemetry data."""

__version__ = "0.1.0"
