"""Desired state: the store contract (Protocol, write rules, errors) and its SQLite implementation."""
