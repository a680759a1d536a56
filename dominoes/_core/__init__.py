"""The sans-IO core: log arithmetic, codec, registry, dispatch and components.

Nothing in this package imports asyncio, os, socket or multiprocessing, and a
test enforces it.  The runtime (``dominoes._runtime``) and the in-process test
cluster (``dominoes.testing``) drive it.
"""
