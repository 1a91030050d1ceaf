"""Built-in tasks; importing this package registers them."""

from tasks import synthetic  # noqa: F401
