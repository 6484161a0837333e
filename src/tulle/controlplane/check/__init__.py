"""`tulle check`'s findings, computed by the control plane: each with a severity, the
resource it is about, the reason and a hint (docs/reference/check.md)."""
