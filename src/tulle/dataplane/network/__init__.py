"""Opaque TCP: the network (L4) filter chain and its terminal, the TCP proxy.

`filter.py` is the contract a filter implements, `order.py` the one place the chain order is
declared, `chain.py` runs it per connection, `relay.py` starts a connection's path (filters,
then `tcp_proxy.py` with the splice or copy engine).  See docs/reference/network-filters.md.
"""
