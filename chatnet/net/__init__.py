"""Socket-level helpers both ends use: the TLS layer, TCP options, acknowledgements."""
