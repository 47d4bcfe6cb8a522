"""The generated table the training tests use; it lives in testing.tables, shared with the serving tests."""

from testing.tables import penguin_like, write_csv

__all__ = ["penguin_like", "write_csv"]
