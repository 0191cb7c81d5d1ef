"""ringfs channel package."""
