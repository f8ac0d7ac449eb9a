"""Data loss prevention: find PHI in a message (detectors) and decide by policy what to do."""
