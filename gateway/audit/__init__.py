"""The audit trail (SPEC §5): who sent what to whom, how it was protected, whether it arrived,
in hash-chained, MAC'd JSON Lines that `mailward audit verify` proves unaltered.

Records hold ids, addresses, codes, rule names and counts: never a subject, body, attachment name
or detector match. `log` writes, `chain` defines the record and its seals, `reader` verifies,
searches, exports and prunes, `events` builds the records from the gateway's objects.
"""
