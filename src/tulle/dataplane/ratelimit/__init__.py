"""Rate limiting's state: token buckets (local), a Redis fixed-window counter (global).

Sans-I/O where it can be: `buckets.py` takes the time as an argument (tests run it on virtual
time); `redis.py` is the one small asyncio client the global limit needs (ADR 0041)."""
