"""Seeing what runs: log lines with structured fields (``logs``), Prometheus metrics
(``metrics``, ``collector``) and OpenTelemetry spans (``tracing``).

Prometheus and OpenTelemetry are optional (``pip install 'tideflow[otel]'``,
``'tideflow[dashboard]'``): without them every hook here is a no-op, so the worker calls them
unconditionally and ``pip install tideflow`` stays light.
"""
