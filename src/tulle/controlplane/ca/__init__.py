"""The mesh's certificate authority, workload identities and bootstrap tokens (ADR 0028).

`authority.py` holds the CA (a P-256 root or an operator's intermediate) and signs workload
CSRs; `persist.py` keeps it in the store so replicas share it; `tokens.py` issues, verifies,
revokes and consumes bootstrap tokens; `admission.py` decides who may use the proxy stream.
"""
