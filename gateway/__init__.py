"""The gateway (``autostep.gateway``): how clients reach autostep.

The REST API (:mod:`autostep.gateway.http`, ``autostep gateway run``, a
process of its own without eventlet) with the websocket ``/ws`` of the live
grid (:mod:`autostep.gateway.live`, fed by :mod:`autostep.gateway.events_hub`)
and its terminal client ``autostep watch`` (:mod:`autostep.gateway.watch`);
and the ``workflows`` and ``conditions`` nameko RPC services
(:mod:`autostep.gateway.workflows`, ``autostep gateway rpc``). All of them
call the same core functions.
"""
