"""Peer identities on TLS connections: SPIFFE IDs read from verified certificates."""
