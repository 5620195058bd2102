"""SQLite and what waits for it: storage, password hashing, worker threads, the cork."""
