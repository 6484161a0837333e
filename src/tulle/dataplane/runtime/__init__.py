"""State across snapshots: what a config swap rebuilds, and what it keeps (DESIGN.md section 4,
"Incremental apply").  `build` compares the frozen config structs of the snapshot in force and
the new one and rebuilds only what changed; `tls` shares SSL contexts per distinct TLS config."""
