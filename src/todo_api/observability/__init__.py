"""Operating it: Prometheus metrics, OpenTelemetry tracing, logs."""
