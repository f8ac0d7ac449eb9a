"""The compliance console: held-message review, for compliance staff (see `web`)."""
