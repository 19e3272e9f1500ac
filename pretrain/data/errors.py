"""The one exception type for dataset problems the user can fix (missing, empty or corrupt sources)."""


class DatasetError(Exception):
    """A dataset source that cannot be used; the message says what is wrong and how to fix it."""
