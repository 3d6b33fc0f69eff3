"""The ``p2paid`` command line, a thin layer over the library."""
