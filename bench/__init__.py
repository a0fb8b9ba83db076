"""Benchmarks: reliable_jobs beside raw PostgreSQL, pgqueuer and procrastinate.

Run all of it with `python -m bench`; see docs/benchmarks.md.
"""
