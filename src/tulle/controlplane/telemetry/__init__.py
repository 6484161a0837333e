"""What the control plane aggregates of the proxies' traffic reports (`tulle stat`, ADR 0046)."""
