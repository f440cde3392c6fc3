"""Example workflows shipped with Flows: the order workflow that `flows demo` runs."""
