"""Declarative apply: YAML documents, plans with causes, the specs-directory follower."""
