"""Admission: the gate (a facade), its policy, refusals, caller accounting and estimates.

Every module here but `gate.py` is pure and takes `now`; the gate wires them to the request
path and the ticker.
"""
