"""The HTTP edge: the server, forwarding, the admin API, input screening, the process's
lifecycle and the event loop's own helpers. The only modules that import aiohttp or run the
event loop, with the upstream pool (`proxy/upstream/`), the scheduler's waiter and the ticker.
"""
