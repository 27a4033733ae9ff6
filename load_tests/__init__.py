"""Load tests and benchmarks: Locust user classes and a reproducible benchmark runner."""
