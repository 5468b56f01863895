"""Small I/O helpers shared across the package (safe unpickling, atomic writes)."""
