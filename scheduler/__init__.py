"""The scheduler: what fires cron triggers.

Local mode (:mod:`autostep.scheduler.local`, ``autostep scheduler run`` with
``AUTOSTEP_SCHEDULER_BACKEND=local``) fires them in its own process, one
leader at a time, through :mod:`autostep.firing`; its clock
(:mod:`autostep.scheduler.clock`) can be simulated for tests. The
Kubernetes mode (not in this build) reconciles them as CronJobs that run
``autostep fire``. The scheduler imports only the shared core; its
Kubernetes adapter is the one module allowed to import the ``kubernetes``
client (an import-linter contract in ``pyproject.toml`` says so).
"""
