"""Mailward: a secure outbound SMTP gateway for mail that carries protected health information."""

__version__ = "0.1.0"
