"""The log-backend conformance suite: what every ``LogBackend`` must do.

``suite.py`` holds the tests, written against the ``LogBackend`` protocol
(``dominoes/_core/_backend.py``) only.  Each backend runs all of them from a
module of its own, ``test_<name>.py``, that subclasses ``LogBackendSuite`` and
provides a ``backend`` fixture (see ``suite.Backend``): ``test_memory.py`` and
``test_shm.py`` are the two examples.  docs/design/log-backend.md states the
contract the tests check.
"""
