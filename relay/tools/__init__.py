"""Tools for rule authors, apart from the daemon: ``relay test-parse`` (testparse.py) and the
golden cases (cases.py).  They run the daemon's own stage (relay/pipeline.py) on a loaded
config, dry: no network, no queues.  ``relay run`` never imports this package, except when a
config sets ``run_tests_at_start`` (relay/cli.py wires the check in)."""
