"""ringfs backend_server package."""
