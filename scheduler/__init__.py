"""The scheduler: cron triggers reconciled as Kubernetes CronJobs.

Not built yet. It will import only the shared core: it starts runs with
:func:`autostep.runs.start_job` inside a unit of work, so a cron tick and its
first step message commit together, and it is the one module allowed to
import the ``kubernetes`` client (an import-linter contract in
``pyproject.toml`` says so).
"""
