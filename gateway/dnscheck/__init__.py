"""`mailward dns check DOMAIN`: the sender domain's DNS against this configuration (DKIM keys,
SPF for the egress IPs, DMARC alignment, MTA-STS and TLS-RPT), read through the configured
resolver, with what to fix."""
