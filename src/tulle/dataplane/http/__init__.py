"""The protocol-neutral HTTP request path: the filter contract (`filter.py`) and the declared
order filters run in (`chain.py`).  Drivers in `listeners/` call into it; it never does I/O."""
