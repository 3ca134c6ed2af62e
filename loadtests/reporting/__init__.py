"""Judging and reporting a load-test run: locust's CSV statistics, thresholds, summary, plot.

Used by `loadtests/run.py` after locust has finished; nothing here imports locust or gevent.
"""
