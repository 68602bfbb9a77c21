"""Pure encoding: events in, bytes/JSON out.  No I/O."""
