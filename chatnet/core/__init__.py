"""The server's pure rules: events in, actions out; no sockets, clocks or database."""
