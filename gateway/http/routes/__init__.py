"""The REST resources, one router per resource: projects, workflows, jobs, functions."""
