"""Implementation of :mod:`zhlora.modeling` (import from there): tiny model, loading, download, merge."""
