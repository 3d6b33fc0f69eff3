"""``p2paid bench``: figures measured on this machine, next to their goals."""
