"""The scheduler: waiters, the tiered queue and its disciplines, and the one wait model.

It knows tiers and callers, not modes: what a mode does to the queue is the gate's business.
Only `waiter.py` touches asyncio (a waiter is a future its request awaits).
"""
