"""The gateway: how clients reach autostep (nameko RPC now; REST and the
websocket grid build on the same service functions)."""
