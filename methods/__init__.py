"""Built-in IRL methods and baselines, one module each; pyproject.toml lists them as entry points."""
