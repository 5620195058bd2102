"""Values that compare by type: what the server's events and the client's effects share.

It owns one decorator and must stay pure (no I/O imports): both ends' pure
cores use it, so it sits on the bottom floor beside ``chatnet.wire``.
"""


def compared_by_type(cls):
    """Make a named tuple equal only to values of its own type.

    A plain named tuple equals any tuple with the same items, so
    ``PauseReading(1) == ResumeReading(1)`` would be true; tests compare lists
    of actions, and must not be fooled by that.
    """
    def __eq__(self, other):
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not __eq__(self, other)

    def __hash__(self):
        return hash((type(self).__name__,) + tuple(self))

    cls.__eq__, cls.__ne__, cls.__hash__ = __eq__, __ne__, __hash__
    return cls
