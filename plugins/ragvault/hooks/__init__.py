"""Hooks: each owns one kind of connection and the clients built on it."""
