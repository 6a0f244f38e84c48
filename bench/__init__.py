"""Benchmarks: `python -m bench NAME` runs bench/NAME.py's main(), which prints one JSON object."""
