"""The terminal client: a pure protocol core and lifecycle, the screen, a ``selectors`` shell."""
