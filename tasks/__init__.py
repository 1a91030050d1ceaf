"""Built-in tasks; importing this package registers them."""

from tasks import synthetic  # noqa: F401
from tasks import detox  # noqa: F401
