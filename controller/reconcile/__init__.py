"""The loop: work queue, the controller wiring sources to workers, the pure decide and its executor."""
