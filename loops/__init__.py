"""Event-loop policies (installed as ``dominoes.loops``)."""
