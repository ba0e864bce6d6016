"""The ``autostep`` command line: the composition root of every process.

``autostep db upgrade`` migrates; ``autostep relay``, ``autostep functions run
MODULE`` and ``autostep gateway run`` start the long-running processes;
``autostep project create``, ``autostep workflow publish``, ``autostep run
start|status [--follow]`` manage workflows and runs against the database;
``autostep dev`` starts a whole local platform with a demo workflow.
It is the one module allowed to import the service packages.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from autostep.exceptions import AutostepError

        if isinstance(exc, AutostepError):
            print(f"autostep: error: {exc}", file=sys.stderr)
            return 1
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autostep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    db = sub.add_parser("db", help="database schema").add_subparsers(metavar="ACTION")
    up = db.add_parser("upgrade", help="migrate the database to the newest schema")
    up.add_argument("--revision", default="head")
    up.set_defaults(handler=_db_upgrade)

    relay = sub.add_parser("relay", help="publish outbox rows to RabbitMQ (runs until stopped)")
    relay.set_defaults(handler=_relay)

    fn = sub.add_parser("functions", help="function runners").add_subparsers(metavar="ACTION")
    fn_run = fn.add_parser("run", help="serve the @functions of modules as nameko services")
    fn_run.add_argument(
        "modules", nargs="+", metavar="MODULE", help="e.g. autostep.functions.builtins"
    )
    fn_run.set_defaults(handler=_functions_run)
    fn_list = fn.add_parser("list", help="the functions that runners serve, from the registry")
    fn_list.add_argument("--json", action="store_true", help="print them with schemas as JSON")
    fn_list.set_defaults(handler=_functions_list)

    gw = sub.add_parser("gateway", help="the gateway").add_subparsers(metavar="ACTION")
    gw_run = gw.add_parser("run", help="serve the workflows and conditions RPC services")
    gw_run.set_defaults(handler=_gateway_run)

    project = sub.add_parser("project", help="projects").add_subparsers(metavar="ACTION")
    p_create = project.add_parser("create", help="create a project")
    p_create.add_argument("name")
    p_create.add_argument("--description", default="")
    p_create.set_defaults(handler=_project_create)

    workflow = sub.add_parser("workflow", help="workflows").add_subparsers(metavar="ACTION")
    w_pub = workflow.add_parser("publish", help="publish a definition file as a new version")
    w_pub.add_argument("project")
    w_pub.add_argument("file", type=Path, help="a .yaml or .json workflow definition")
    w_pub.set_defaults(handler=_workflow_publish)

    run = sub.add_parser("run", help="runs (jobs)").add_subparsers(metavar="ACTION")
    r_start = run.add_parser("start", help="start a run of a workflow")
    r_start.add_argument("project")
    r_start.add_argument("workflow")
    r_start.add_argument("--input", default="{}", help="the run's input as a JSON object")
    r_start.add_argument("--version", type=int, help="a version number (default: newest)")
    r_start.add_argument("--follow", action="store_true", help="draw progress until it ends")
    r_start.set_defaults(handler=_run_start)
    r_status = run.add_parser("status", help="show a run and its processes")
    r_status.add_argument("job_id")
    r_status.add_argument("--follow", action="store_true", help="draw progress until it ends")
    r_status.add_argument("--json", action="store_true", help="print the job as JSON")
    r_status.set_defaults(handler=_run_status)

    dev = sub.add_parser("dev", help="run relay, functions and gateway locally, plus a demo")
    dev.add_argument("--no-demo", action="store_true", help="do not start the demo run")
    dev.set_defaults(handler=_dev)
    return parser


# -- long-running processes ---------------------------------------------------


def _db_upgrade(args: argparse.Namespace) -> int:
    from autostep.migrate import upgrade

    upgrade(revision=args.revision)
    print("database is at", args.revision)
    return 0


def _relay(args: argparse.Namespace) -> int:
    import logging
    import signal

    from autostep.relay import Relay

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(message)s")
    relay = Relay()
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    try:
        relay.run()
    except KeyboardInterrupt:
        relay.stop()
    return 0


def _functions_run(args: argparse.Namespace) -> int:
    def services() -> list[type]:
        from autostep.exceptions import NotFoundError
        from autostep.functions.deadletters import DeadLetterService
        from autostep.functions.service import services_for

        sys.path.insert(0, ".")  # modules of the project in the working directory
        found: list[type] = [DeadLetterService]
        for module in args.modules:
            try:
                found.extend(services_for(module).values())
            except (ImportError, NotFoundError) as exc:
                print(f"autostep: error: MODULE {module!r}: {exc}", file=sys.stderr)
                raise SystemExit(2) from exc
        return found

    return _serve("functions", services)


def _gateway_run(args: argparse.Namespace) -> int:
    def services() -> list[type]:
        from autostep.gateway.workflows import ConditionsService, WorkflowsService

        return [WorkflowsService, ConditionsService]

    return _serve("gateway", services)


def _serve(label: str, services: Callable[[], list[type]]) -> int:
    """Run the nameko services that ``services`` imports, in this process, until stopped.

    eventlet patches the process first, before ``services`` imports anything
    that opens sockets or starts threads.
    """
    from autostep.cooperative import patch_process

    patch_process()
    import logging

    from autostep.nameko_runtime import run_services

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(message)s")
    run_services(services())
    return 0


# -- management -------------------------------------------------------------


def _session_factory() -> Any:
    from autostep.db import make_engine, make_session_factory

    return make_session_factory(make_engine())


def _project_create(args: argparse.Namespace) -> int:
    from autostep.catalog import create_project
    from autostep.db import unit_of_work

    with unit_of_work(_session_factory()) as session:
        project = create_project(session, args.name, args.description)
        print(project.id)
    return 0


def _workflow_publish(args: argparse.Namespace) -> int:
    from autostep.catalog import publish_workflow
    from autostep.db import unit_of_work

    definition = _load_definition(args.file)
    with unit_of_work(_session_factory()) as session:
        version = publish_workflow(session, args.project, definition)
        print(f"published {definition.get('name')} version {version.number} ({version.id})")
        _warn_unserved(session, version)
    return 0


def _warn_unserved(session: Any, version: Any) -> None:
    """Warn about steps whose function no live runner serves (runners may start later)."""
    from autostep.registry import unserved

    for warning in unserved(session, version.definition):
        print(f"warning: {warning}", file=sys.stderr)


def _functions_list(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.registry import list_functions

    with unit_of_work(_session_factory()) as session:
        listed = list_functions(session)
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    rows = [("FUNCTION", "MODULE", "RUNNERS", "LAST HEARTBEAT", "RETRY POLICY")]
    for function in listed:
        policy = function["policy"]
        timeout = f"{policy['timeout']} s" if policy.get("timeout") is not None else "none"
        rows.append(
            (
                function["name"],
                function["module"],
                str(len(function["runners"])),
                f"{function['seconds_since_heartbeat']:.0f} s ago",
                f"retries {policy['retries']}, backoff {policy['backoff']} s, timeout {timeout}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*padded, row[-1]]))
    if not listed:
        print("(no runner has registered a function)")
    return 0


def _load_definition(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"autostep: error: FILE {path}: {exc.strerror}") from exc
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SystemExit(f"autostep: error: FILE {path}: a definition is a mapping")
    return data


def _run_start(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.runs import start_job

    try:
        payload = json.loads(args.input)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"autostep: error: --input is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise SystemExit("autostep: error: --input must be a JSON object")
    factory = _session_factory()
    with unit_of_work(factory) as session:
        job = start_job(
            session, args.project, args.workflow, payload, trigger="cli", version=args.version
        )
        job_id = job.id
    print(job_id)
    if args.follow:
        return _follow(factory, str(job_id))
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.queries import job_view

    factory = _session_factory()
    if args.follow:
        return _follow(factory, args.job_id)
    with unit_of_work(factory) as session:
        view = job_view(session, args.job_id)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(_render(view))
    return 0 if view["status"] != "failed" else 1


def _follow(factory: Any, job_id: str) -> int:
    """Redraw the job whenever it changes, until it finishes."""
    from autostep.queries import follow_job

    last = None
    interactive = sys.stdout.isatty()
    for view in follow_job(factory, job_id):
        frame = _render(view)
        if frame != last:
            if interactive and last is not None:
                sys.stdout.write(f"\x1b[{last.count(chr(10)) + 1}F\x1b[J")
            print(frame, flush=True)
            last = frame
    return 0 if view["status"] == "succeeded" else 1


_MARK = {
    "queued": "·",
    "running": "▶",
    "succeeded": "✔",
    "failed": "✘",
    "cancelled": "⊘",
}


def _render(view: dict[str, Any]) -> str:
    lines = [f"job {view['id']}  {view['status']}"]
    for process in view["processes"]:
        indent = "    " if process["parent_id"] else "  "
        item = f"[{process['item_index']}]" if process["item_index"] is not None else ""
        attempt = f" attempt {process['attempt']}" if process["attempt"] > 1 else ""
        error = f"  {process['error']}" if process["error"] else ""
        if process.get("waiting"):
            error += f"  waiting: {process['waiting']}"
        mark = _MARK.get(process["status"], "?")
        lines.append(f"{indent}{mark} {process['step']}{item} {process['status']}{attempt}{error}")
    if view["status"] == "succeeded":
        lines.append(f"output: {json.dumps(view['output'])}")
    elif view["error"]:
        lines.append(f"error: {view['error']}")
    return "\n".join(lines)


def _dev(args: argparse.Namespace) -> int:
    from autostep.devserver import run_dev

    return run_dev(demo=not args.no_demo)


if __name__ == "__main__":
    sys.exit(main())
