"""The gateway (``autostep.gateway``): how clients reach autostep.

Today the ``workflows`` and ``conditions`` nameko RPC services; REST and the
websocket grid will call the same core functions.
"""
