"""Shared pytest fixtures live in tests/plugins/, one module per concern."""

pytest_plugins = ["tests.plugins.kafka", "tests.plugins.data", "tests.plugins.checkout"]
