"""Sluice's load-test harness: incident replay (backend simulator, client fleet, scenarios,
runner, table and timeline) and a small Locust-style user API. See DESIGN.md §5.

`loadtest/locustfile.py` is a real Locust file for pointing Locust at your own deployment; it is
never imported by the rest of the harness (Locust's gevent and uvloop must not share a process).
"""
