"""The README's systemd recipe, where it can be checked without systemd as PID 1 (issue 22, item 14).

The account command of "Running it under systemd" runs as the service's
system user (``runuser``), so the database's files stay that user's; root
writing to such a database is refused, naming the command to use.  Here the
README's own command line is run, with the service user ``nobody`` and paths
in a temporary folder -- as root, where ``runuser`` works.
"""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from live_server import REPO, python_env

USER = "nobody"


def readme_account_command():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    match = re.search(r"^(runuser -u chatnet -- .*?\\\n\s+python3 -m chatnet\.accounts .*? add alice)$",
                      text, re.M)
    assert match, "the README has no runuser account command"
    return match.group(1).replace("\\\n", " ")


def python_for(user):
    """A Python ``user`` can run, or None."""
    for python in ("/usr/bin/python3", os.path.realpath(os.sys.executable)):
        if os.path.exists(python) and subprocess.run(
                ["runuser", "-u", user, "--", python, "-c", "import sqlite3, sys; "
                 "assert sys.version_info >= (3, 8)"], capture_output=True, timeout=30).returncode == 0:
            return python
    return None


@pytest.fixture
def state_directory():
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser")
    if subprocess.run(["runuser", "-u", USER, "--", "test", "-r",
                       os.path.join(REPO, "chatnet", "__init__.py")], timeout=30).returncode:
        pytest.skip("the checkout is not readable by %s" % USER)
    python = python_for(USER)
    if python is None:
        pytest.skip("no Python 3.8+ that %s can run" % USER)
    folder = tempfile.mkdtemp(prefix="chatnet-state-")      # as StateDirectory= makes it
    shutil.chown(folder, USER)
    os.chmod(folder, 0o700)
    yield folder, python
    shutil.rmtree(folder)


def test_the_readme_account_command_keeps_every_file_the_service_users(state_directory):
    folder, python = state_directory
    command = (readme_account_command().replace("-u chatnet", "-u " + USER)
               .replace("/opt/chatnet", REPO).replace("/var/lib/chatnet", folder)
               .replace(" python3 ", " %s " % python)
               .replace("add alice", "add alice --password-stdin"))
    result = subprocess.run(command, shell=True, input=b"pw\n", capture_output=True, timeout=60,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    database = os.path.join(folder, "chatnet.db")
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True).stdout)
    for name in os.listdir(folder):                          # the file, and any -wal and -shm
        assert os.stat(os.path.join(folder, name)).st_uid == uid, name
    assert os.stat(database).st_mode & 0o777 == 0o600


def test_root_writing_to_the_service_users_database_is_refused_with_the_command_to_use(
        state_directory):
    folder, python = state_directory
    database = os.path.join(folder, "chatnet.db")
    made = subprocess.run(["runuser", "-u", USER, "--", python, "-m", "chatnet.accounts", "--db",
                           database, "add", "alice", "--password-stdin"], input=b"pw\n",
                          capture_output=True, env=python_env(), cwd="/", timeout=60)
    assert made.returncode == 0, made.stderr
    as_root = subprocess.run([os.sys.executable, "-m", "chatnet.accounts", "--db", database, "add",
                              "bob", "--password-stdin"], input=b"pw\n", capture_output=True,
                             env=python_env(), timeout=60)
    lines = as_root.stderr.decode().splitlines()
    assert as_root.returncode == 1 and len(lines) == 1, lines
    assert "belongs to %s" % USER in lines[0] and "runuser -u %s" % USER in lines[0], lines
    listed = subprocess.run([os.sys.executable, "-m", "chatnet.accounts", "--db", database, "list"],
                            capture_output=True, env=python_env(), timeout=60)
    assert listed.returncode == 0 and listed.stdout == b"alice\n"     # reading is fine
