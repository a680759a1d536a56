"""The I/O shell around the core: shared memory, atomics, eventfd, processes, ingress."""
