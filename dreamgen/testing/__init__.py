"""Small analytic and random models for tests, benchmarks and the 2-D lab (no downloads)."""
