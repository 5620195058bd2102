"""``python -m chatnet``: point at the real commands."""

import sys

from . import __version__

USAGE = """chatnet %s -- a TCP chat server and terminal client

  python -m chatnet.server --demo          run a server with demo accounts
  python -m chatnet.server --db FILE       run a server on a database
  python -m chatnet.accounts --db FILE ... manage accounts (add, passwd, remove, list, import)
  python -m chatnet.client --user ID       chat (a split screen; --plain for line mode)
  python -m chatnet.bench --local          measure a server's speed

Each command takes --help.
""" % __version__

if __name__ == "__main__":
    sys.stdout.write(USAGE)
