"""Tulle's data-plane benchmark (its own runner, not pytest): see bench/README.md."""
