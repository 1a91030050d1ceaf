"""Built-in tasks; pyproject.toml lists them as entry points (`irl_bench.tasks`)."""
