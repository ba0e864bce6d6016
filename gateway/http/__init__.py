"""The HTTP gateway (``autostep gateway run``): REST over the core, in a process of its own.

:func:`~autostep.gateway.http.app.create_app` builds the FastAPI app;
:func:`~autostep.gateway.http.server.serve` runs it on uvicorn. The process
never imports eventlet or nameko: they would patch the asyncio server
underneath.
"""
