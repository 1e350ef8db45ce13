"""Kafka broker fixtures (filled in by the foundation work)."""
