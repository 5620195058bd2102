"""``python -m chatnet.client``: the terminal client (see ``chatnet.client.main``)."""

from .main import entry_point

if __name__ == "__main__":
    entry_point()
