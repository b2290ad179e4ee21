"""Looking at it: Prometheus metrics, stats sampling, structured logs, the watch hub."""
