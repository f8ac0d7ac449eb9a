"""Pipeline stages: each has one job over the message (DLP, encryption, DKIM, audit)."""
