"""Stands in for a library (like SQLAlchemy) whose own helper constructs the objects an app
subclasses: the kit must step over this package when it looks for the creation site."""


class Base:
    def __init__(self, name="base"):
        self.name = name

    def run(self):
        return self.name


def make(cls):
    """Like async_sessionmaker: the library builds the app's subclass."""
    return cls()
