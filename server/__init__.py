"""The HTTP edge: Starlette app, GraphQL endpoint, REST shim, image files, CLI."""
