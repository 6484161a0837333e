"""Endpoint health on the proxy: outlier detection (passive), active probes, and the one flag
balancers read (`EndpointState.healthy`), which is both of them together (ADR 0040).

`state.py` holds an endpoint's health, `outlier.py` the sans-I/O ejection logic, `probe.py`
one active probe, and `manager.py` the asyncio side that ties them to the clusters in force.
"""
