"""The pure core of canaryws: contract, strategies, cohort decision, flags document.

Nothing in this package does I/O or imports FastAPI, uvicorn or OpenTelemetry.
"""
