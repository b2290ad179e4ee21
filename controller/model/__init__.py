"""Plain data and pure helpers: the Agent, quantities, selectors, mounts, times, error codes.

Imports nothing above it."""
