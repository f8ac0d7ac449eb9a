"""Transport security: what TLS a destination needs and how that is learned. The admin's TLS
policy map, MTA-STS (RFC 8461), DANE (RFC 7672), TLS reports (RFC 8460) and the cache of what
each destination offered. The delivery core asks it for a requirement before it connects."""
