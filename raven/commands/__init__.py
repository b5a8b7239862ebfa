"""One module per top-level verb of the `raven` command; see raven.cli."""
