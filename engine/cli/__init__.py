"""The command-line interface: engine.cli.main dispatches to one module per group of commands."""
