"""Conformance adapters over third-party RepVGG blocks (examples for port authors; not installed)."""
