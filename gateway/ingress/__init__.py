"""SMTP ingress: the listeners that accept mail from the systems allowed to relay through us."""
