"""The ringfs command line: one module per subcommand."""
