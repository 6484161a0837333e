"""Tracing: W3C/B3 trace context, sampled spans, OTLP export (ADR 0055)."""
