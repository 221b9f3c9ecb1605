"""The HTTP server: app, micro-batcher, schema, body limit, demo page."""
