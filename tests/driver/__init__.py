"""Unit tests of the driver's bookkeeping (fusefront/): node table, command-body chunking."""
