"""End-to-end encryption of messages for one recipient: S/MIME and PGP/MIME, key lookup and the
MIME wrapping they share. No policy here: the delivery agent decides who gets what."""
