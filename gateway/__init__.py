"""The gateway (``autostep.gateway``): how clients reach autostep.

The ``workflows`` and ``conditions`` nameko RPC services; the websocket
``/ws`` of the live grid (:mod:`autostep.gateway.live`, on asyncio, never
under eventlet) and its terminal client ``autostep watch``
(:mod:`autostep.gateway.watch`). REST calls the same core functions.
"""
