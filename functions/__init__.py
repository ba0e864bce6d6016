"""Function runners (``autostep.functions``): step functions served as nameko services.

:func:`~autostep.functions.service.services_for` (exported as
``autostep.services_for``) turns every ``@function`` of a module into a
nameko service ``fn_<name>`` consuming ``autostep.fn.<name>``; its
:class:`~autostep.functions.entrypoint.StepConsumer` hands each message to
:func:`~autostep.functions.runner.run_step`; the ``deadletters`` service ends
the processes whose messages died; ``autostep.functions.builtins`` holds the
functions every installation has. Run them with ``autostep functions run
MODULE`` or ``nameko run MODULE``.
"""
