"""Sender reputation: which egress IP and pool a message leaves from, how fast each destination
is sent to (shaping, warm-up caps), what a refusal says about our reputation (bounce classes),
and who must not be written to again (suppression, unsubscribe links). Below ingress (which takes
unsubscribes and complaints) and the delivery core (which asks it before every send); it knows
neither."""
