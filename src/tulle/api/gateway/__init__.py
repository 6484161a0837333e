"""Gateway API route kinds (`HTTPRoute`, `GRPCRoute`, `TCPRoute`) with a Service parent (GAMMA)."""
