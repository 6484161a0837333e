"""Policy kinds, one module each; each registers itself and declares what it may target."""
