"""How much of a request the API will read at all (kept light: the server's protocol imports it too)."""

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024  # names and values of all request headers together
MAX_TOKEN_BYTES = 8 * 1024  # a longer bearer token is refused unparsed
