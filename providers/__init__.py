"""Built-in providers: one flat module per provider, grouped by API."""
