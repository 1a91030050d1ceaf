"""Built-in IRL methods and baselines; importing this package registers them."""

from methods import baselines, bradley_terry, failure_aware, implicit, max_margin  # noqa: F401
