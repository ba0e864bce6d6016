"""Function runners: serve step functions as nameko services on RabbitMQ.

``functions.service.services_for`` turns every ``@function`` of a module into
a nameko service consuming ``autostep.fn.<name>``; ``functions.builtins``
holds the functions every installation has. Run them with
``autostep functions run MODULE`` or ``nameko run MODULE``.
"""
