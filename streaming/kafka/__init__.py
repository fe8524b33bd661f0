"""Kafka I/O: the local development broker and topic administration."""
