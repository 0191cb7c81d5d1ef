"""ringfs fusefront package."""
