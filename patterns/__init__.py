"""Runnable examples of each kind of job, run by `reliable-jobs demo`."""
