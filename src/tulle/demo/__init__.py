"""`tulle demo`: a meshed sample application in network namespaces (ADR 0049).

`apps` holds the sample services (ordinary HTTP and gRPC programs that know nothing of the
mesh), `mesh` the resources the demo applies, `topology` the namespaces, sidecars and the node
agent, `report` the live summary, and `run` the command's life cycle.  `loopback` (with
`loopback_apps` and `loopback_mesh.yaml`) is the fallback without root: processes on
127.0.0.1 and explicit listeners.
"""
