"""The control plane's REST API (OpenAPI at /openapi.json): resources, apply, proxies."""
