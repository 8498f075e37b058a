"""Benchmarks of the customer-success backend; run them with ``python -m bench``."""
