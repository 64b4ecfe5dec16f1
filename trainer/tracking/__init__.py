"""Telemetry during a run: the live tracker (throughput, MFU, HFU, dollars, ETA), the goodput record,
metrics.jsonl, and the report with its plots at the end."""
