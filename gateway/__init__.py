"""The gateway (``autostep.gateway``): how clients reach autostep.

The REST API (:mod:`autostep.gateway.http`, ``autostep gateway run``, a
process of its own without eventlet) and the ``workflows`` and ``conditions``
nameko RPC services (:mod:`autostep.gateway.workflows`, ``autostep gateway
rpc``) call the same core functions.
"""
