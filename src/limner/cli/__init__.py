"""The `limner` command. The server is imported only by `limner serve`."""
