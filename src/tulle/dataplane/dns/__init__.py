"""The proxy's mesh DNS resolver (ADR 0042): a name table built per snapshot (`table`), the
per-query decision (`resolver`, sans-I/O), upstream forwarding (`forward`) and the UDP/TCP
edge (`server`)."""
