"""Subcommands, one module per area. Top-level imports: stdlib and tinytownd.cli only."""
