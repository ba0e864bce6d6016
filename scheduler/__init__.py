"""The scheduler: cron triggers reconciled as Kubernetes CronJobs.

Not built yet (it follows the engine on the roadmap). It will import only
the shared core (:mod:`autostep`): it starts runs with
:func:`autostep.engine.start_job` inside a unit of work, so a cron tick and
its first step message commit together.
"""
