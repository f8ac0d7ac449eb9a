"""Sender reputation: who must not be written to again (suppression) and how a recipient says so
(unsubscribe links). Below both ingress (which takes unsubscribes and complaints) and delivery
(which honours them); knows neither."""
