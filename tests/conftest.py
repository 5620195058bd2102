"""Fixtures shared by the integration tests."""

import pytest

from live_server import LiveServer, make_database

#: Accounts of the default test database: ID -> password.
ACCOUNTS = {
    "alice": "pw", "bob": "secret", "carol": "pw", "dave": "pw", "erin": "pw",
    "abcdefg": "1234567", "Bob": "upper",
}


@pytest.fixture
def database(tmp_path):
    path = str(tmp_path / "chatnet.db")
    make_database(path, ACCOUNTS)
    return path


def server_starter(database, tls=False, web=False):
    """``start(*flags)`` starts a server on the test database; ``stop_all()`` checks and stops them."""
    servers = []

    def start(*flags, db=None):
        server = LiveServer(db or database, *flags, tls=tls, web=web).start()
        servers.append(server)
        return server

    def stop_all():
        for server in servers:
            problems = server.problems()
            status = server.stop() if server.alive() else None
            assert not problems, "the server logged errors: %r" % server.stderr_lines
            assert status in (None, 0), "exit status %r; stderr %r" % (status, server.stderr_lines)

    return start, stop_all


@pytest.fixture
def start_server(database):
    """``start_server(*flags)`` starts a server on the test database; all are stopped after."""
    start, stop_all = server_starter(database)
    yield start
    stop_all()


@pytest.fixture
def server(start_server):
    return start_server()
