"""The aiohttp application: routes, middlewares (errors, auth, throttle), streams, OpenAPI."""
