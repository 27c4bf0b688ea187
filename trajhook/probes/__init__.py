"""Probes: fixed inputs run through the model at every record."""
