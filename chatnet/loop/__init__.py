"""The server's ``selectors`` loop and everything it owns: connections, transports, timers."""
