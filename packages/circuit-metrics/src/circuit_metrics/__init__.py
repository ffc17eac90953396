"""circuit-metrics: circuit for Prometheus, and circuit top."""
