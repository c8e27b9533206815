"""HTTP routes: thin routers that parse, call the API implementation and serialize."""
