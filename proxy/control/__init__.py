"""Control: the mode machine, the limiters, the signals they read, and the gate's ticker.

Pure and clock-injected but for `ticker.py`, which runs the gate's rounds in the event loop.
"""
