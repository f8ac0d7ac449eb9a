"""Every SMTP reply the ingress sends, named once, with its RFC 3463 enhanced status code.

aiosmtpd's own replies carry no enhanced codes; `ENHANCED_DEFAULTS` supplies one by reply code
so that, once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply carries one (RFC 2034).
"""

from __future__ import annotations

import re

# Sent by our own handler.
OK_SENDER = "250 2.1.0 Sender ok"
OK_RECIPIENT = "250 2.1.5 Recipient ok"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_LOCKED = "454 4.7.0 Temporary authentication failure: too many failed attempts, try again later"
AUTH_NOT_ENABLED = "503 5.5.1 Error: authentication not enabled"
AUTH_ALREADY = "503 5.5.1 Error: already authenticated"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_SYNTAX = "501 5.5.2 Cannot decode response"
AUTH_IN_TRANSACTION = "503 5.5.1 Error: AUTH not allowed during a mail transaction"
RELAY_DENIED = "554 5.7.1 <{address}>: Relay access denied"
SENDER_DOMAIN_DENIED = "553 5.7.1 <{address}>: Sender address rejected: domain not served here"
TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
BAD_DSN_PARAMETER = "501 5.5.4 Error: bad {name} parameter"
QUEUE_WRITE_ERROR = "451 4.3.0 Error: queue file write error"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
TOO_MANY_CONNECTIONS = "421 4.7.0 {hostname} Error: too many connections"
TOO_MANY_FROM_IP = "421 4.7.0 {hostname} Error: too many connections from your address"
TOO_MANY_ERRORS = "421 4.7.0 {hostname} Error: too many errors"
TIMEOUT = "421 4.4.2 {hostname} Error: timeout exceeded"

# Sent by the protocol while parsing commands.
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address>"
MAIL_NESTED = "503 5.5.1 Error: nested MAIL command"
SENDER_MALFORMED = "553 5.1.7 Error: malformed sender address"
MAIL_PARAMS_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
BAD_SIZE = "501 5.5.4 Error: bad SIZE parameter"
SIZE_EXCEEDED = "552 5.3.4 Error: message size exceeds fixed maximum message size"
BAD_BODY = "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
BAD_SMTPUTF8 = "501 5.5.4 Error: SMTPUTF8 takes no arguments"
BAD_REQUIRETLS = "501 5.5.4 Error: REQUIRETLS takes no arguments"
REQUIRETLS_NEEDS_TLS = "530 5.7.10 REQUIRETLS needs a TLS session (STARTTLS first)"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
RCPT_SYNTAX = "501 5.1.3 Syntax: RCPT TO:<address>"
RECIPIENT_MALFORMED = "553 5.1.3 Error: malformed recipient address"
RECIPIENT_BAD_CHARACTERS = ("501 5.1.3 Error: recipient address has control characters, invalid UTF-8, "
                            "or 8-bit characters without SMTPUTF8")
SENDER_BAD_CHARACTERS = ("553 5.1.7 Error: sender address has control characters, invalid UTF-8, "
                         "or 8-bit characters without SMTPUTF8")
RCPT_PARAMS_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
BAD_PARAMETERS = "501 5.5.4 Error: bad parameters"
AUTH_SYNTAX_ARGS = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
TLS_HANDSHAKE_FAILED = "454 4.7.0 TLS not available due to temporary reason"
INTERNAL_ERROR = "451 4.3.0 Error: internal error, try again later"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 5.3.4 Error: Too much mail data"
MAIL_PARAMS_UNKNOWN = "555 5.5.4 Error: MAIL parameters not recognized: "
RCPT_PARAMS_UNKNOWN = "555 5.5.4 Error: RCPT parameters not recognized: "

# Default enhanced codes for replies that come without one (aiosmtpd's built-in replies).
ENHANCED_DEFAULTS = {
    "221": "2.0.0", "250": "2.0.0", "235": "2.7.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.1.1", "552": "5.3.4",
    "553": "5.1.3", "554": "5.3.0", "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """Insert the default enhanced code into a 2xx/4xx/5xx reply line that has none."""
    if len(reply) < 3 or reply[0] not in "245" or _HAS_ENHANCED.match(reply):
        return reply
    code = ENHANCED_DEFAULTS.get(reply[:3])
    if code is None:
        return reply
    separator = reply[3:4] or " "
    return f"{reply[:3]}{separator}{code} {reply[4:]}".rstrip()
FEEDBACK_ACCEPTED = "250 2.0.0 Ok: thank you, handled"
