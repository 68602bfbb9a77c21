"""Stand-ins for remote products (real servers on 127.0.0.1, stdlib only) for tests and demos."""
