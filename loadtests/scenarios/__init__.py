"""Load-test scenarios for the gateway: traffic, the per-request recorder and admin controllers.

Imported by `loadtests/locustfile.py` (inside a gevent-patched locust process) and, for the
record format only, by `loadtests/run.py`.
"""
