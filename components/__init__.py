"""Reusable dominoes components (installed as ``dominoes.components``).

They are built only on the public API, like any user's components.
"""
