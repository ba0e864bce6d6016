"""The ``autostep`` command line: the composition root of every process.

``autostep db upgrade`` migrates; ``autostep relay``, ``autostep functions run
MODULE``, ``autostep gateway run`` (REST) and ``autostep gateway rpc`` (nameko
RPC) start the long-running processes, and ``autostep health`` is the liveness
probe of those without HTTP;
``autostep project create|list``, ``autostep workflow publish|list``,
``autostep run start|status|list|cancel|rerun`` manage workflows and runs
against the database; ``autostep trigger ...`` manages triggers and
``autostep fire`` fires a cron trigger's tick (:mod:`autostep.trigger_commands`);
``autostep scheduler run`` fires cron triggers locally (:mod:`autostep.scheduler.local`);
``autostep dev`` starts a whole local platform with a demo workflow;
``autostep watch`` prints live events from the gateway's websocket.
It is the one module allowed to import the service packages.

Exit codes: 0 done, 1 failed (a failed run, a missing workflow), 2 a usage
error (a bad flag, argument, input or file), named in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from autostep import trigger_commands

__all__ = ["main"]

#: Exit code of a usage error: a bad flag, argument, input or file.
USAGE_ERROR = 2


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
        from autostep.exceptions import AutostepError, InvalidInput

        if isinstance(exc, AutostepError):
            print(f"autostep: error: {exc}", file=sys.stderr)
            return USAGE_ERROR if isinstance(exc, InvalidInput) else 1
        raise


def _usage_error(message: str) -> NoReturn:
    """Stop with ``message`` on one line of stderr and exit code 2."""
    print(f"autostep: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


#: reStructuredText in docstrings: ``literal``, :role:`~a.b.target`, `text`.
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]+?)(?:\s*<[^`]*>)?`")
_RST_TEXT = re.compile(r"`([^`]+)`_{0,2}")


def _plain(text: str) -> str:
    """``text`` without reStructuredText markup, as a terminal shows it."""
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_ROLE.sub(lambda found: found.group(1).split(".")[-1], text)
    return _RST_TEXT.sub(r"\1", text).replace("::\n", ":\n")


class _PlainHelpFormatter(argparse.HelpFormatter):
    """Help whose descriptions and help texts are plain text (they come from docstrings)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(_plain(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return _plain(super()._expand_help(action))


class _Parser(argparse.ArgumentParser):
    """The CLI's parsers (subcommands included): plain-text help, exit code 2 on errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _PlainHelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autostep", description=__doc__.splitlines()[0])
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
    gw_run = gw.add_parser(
        "run", help="serve the REST API on AUTOSTEP_HTTP_HOST:AUTOSTEP_HTTP_PORT (127.0.0.1:8080)"
    )
    gw_run.set_defaults(handler=_gateway_run)
    gw_rpc = gw.add_parser(
        "rpc", help="serve the workflows, conditions and triggers nameko RPC services"
    )
    gw_rpc.set_defaults(handler=_gateway_rpc)

    sched = sub.add_parser("scheduler", help="the cron scheduler").add_subparsers(metavar="ACTION")
    sched_run = sched.add_parser(
        "run",
        help="fire cron triggers: in this process (AUTOSTEP_SCHEDULER_BACKEND=local, the "
        "default) or as Kubernetes CronJobs (kubernetes); runs until stopped",
    )
    sched_run.set_defaults(handler=_scheduler_run)

    project = sub.add_parser("project", help="projects").add_subparsers(metavar="ACTION")
    p_create = project.add_parser("create", help="create a project")
    p_create.add_argument("name")
    p_create.add_argument("--description", default="")
    p_create.set_defaults(handler=_project_create)
    p_list = project.add_parser("list", help="list the projects")
    p_list.set_defaults(handler=_project_list)

    workflow = sub.add_parser("workflow", help="workflows").add_subparsers(metavar="ACTION")
    w_pub = workflow.add_parser("publish", help="publish a definition file as a new version")
    w_pub.add_argument("project")
    w_pub.add_argument("file", type=Path, help="a .yaml or .json workflow definition")
    w_pub.set_defaults(handler=_workflow_publish)
    w_list = workflow.add_parser("list", help="list a project's workflows")
    w_list.add_argument("project")
    w_list.set_defaults(handler=_workflow_list)

    run = sub.add_parser("run", help="runs (jobs)").add_subparsers(metavar="ACTION")
    r_start = run.add_parser("start", help="start a run of a workflow")
    r_start.add_argument("project")
    r_start.add_argument("workflow")
    r_start.add_argument(
        "--input",
        default="{}",
        help="the run's input: a JSON object, @FILE to read it from FILE, or - from stdin",
    )
    r_start.add_argument("--version", type=int, help="a version number (default: newest)")
    r_start.add_argument("--follow", action="store_true", help="draw progress until it ends")
    r_start.set_defaults(handler=_run_start)
    r_status = run.add_parser("status", help="show a run and its processes")
    r_status.add_argument("job_id")
    r_status.add_argument("--follow", action="store_true", help="draw progress until it ends")
    r_status.add_argument("--json", action="store_true", help="print the job as JSON")
    r_status.set_defaults(handler=_run_status)
    r_list = run.add_parser("list", help="list the newest runs")
    r_list.add_argument("--project", help="with --workflow: only that workflow's runs")
    r_list.add_argument("--workflow", help="only this workflow's runs (needs --project)")
    r_list.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    r_list.set_defaults(handler=_run_list)
    r_cancel = run.add_parser("cancel", help="cancel a run (a finished run stays as it is)")
    r_cancel.add_argument("job_id")
    r_cancel.set_defaults(handler=_run_cancel)
    r_rerun = run.add_parser(
        "rerun", help="run a failed or cancelled run again from where it stopped"
    )
    r_rerun.add_argument("job_id")
    r_rerun.add_argument("--follow", action="store_true", help="draw progress until it ends")
    r_rerun.set_defaults(handler=_run_rerun)

    watch = sub.add_parser(
        "watch", help="print the live events of a job, workflow or project from the gateway"
    )
    followed = watch.add_mutually_exclusive_group(required=True)
    followed.add_argument("--project", metavar="ID", help="a project's jobs and their steps")
    followed.add_argument("--workflow", metavar="ID", help="a workflow's jobs and their steps")
    followed.add_argument("--job", metavar="ID", help="one job (ends when the job has finished)")
    watch.add_argument("--json", action="store_true", help="print each frame as a JSON line")
    watch.add_argument(
        "--url", default="ws://127.0.0.1:8080/ws", help="the gateway's websocket (%(default)s)"
    )
    watch.set_defaults(handler=_watch)

    health = sub.add_parser(
        "health",
        help="a worker's liveness probe: exit 0 if its heartbeat file is fresh, else 1",
    )
    health.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="relay, functions, gateway-rpc or scheduler (default: every file in the directory)",
    )
    health.add_argument(
        "--max-age",
        type=float,
        default=60.0,
        help="seconds a heartbeat may be old (default %(default)s)",
    )
    health.set_defaults(handler=_health)

    trigger_commands.add_parsers(sub)

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


def _health(args: argparse.Namespace) -> int:
    from autostep.health import check

    verdict = check(args.components, max_age=args.max_age)
    print(verdict.message, file=sys.stdout if verdict.healthy else sys.stderr)
    return 0 if verdict.healthy else 1


def _local_scheduler_run() -> int:
    """The local scheduler on plain threads: this process is never patched by eventlet."""
    import logging
    import signal
    import threading

    from autostep.settings import get_settings

    settings = get_settings()
    from autostep.db import make_engine, make_session_factory
    from autostep.scheduler.clock import parse_clock
    from autostep.scheduler.local import LocalScheduler

    clock = parse_clock(settings.scheduler_clock)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scheduler = LocalScheduler(
        make_session_factory(make_engine(settings)),
        settings.database_url,
        clock,
        poll_seconds=settings.scheduler_poll_seconds,
        retry_seconds=settings.scheduler_retry_seconds,
        workers=settings.scheduler_workers,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler.run(stop)
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

    return _serve("functions", services, component="functions")


def _gateway_run(args: argparse.Namespace) -> int:
    """The HTTP gateway, on asyncio: this process is never patched by eventlet."""
    from autostep.gateway.http.server import serve

    serve()
    return 0


def _gateway_rpc(args: argparse.Namespace) -> int:
    def services() -> list[type]:
        from autostep.gateway.triggers import TriggersService
        from autostep.gateway.workflows import ConditionsService, WorkflowsService

        return [WorkflowsService, ConditionsService, TriggersService]

    return _serve("gateway", services, component="gateway-rpc")


def _scheduler_run(args: argparse.Namespace) -> int:
    from autostep.exceptions import InvalidInput
    from autostep.settings import get_settings

    backend = get_settings().scheduler_backend
    if backend == "kubernetes":

        def services() -> list[type]:
            from autostep.scheduler.service import SchedulerService

            return [SchedulerService]

        return _serve("scheduler", services, component="scheduler")
    if backend == "local":
        return _local_scheduler_run()
    raise InvalidInput(
        f"unknown backend {backend!r}; use kubernetes or local", field="AUTOSTEP_SCHEDULER_BACKEND"
    )


def _serve(label: str, services: Callable[[], list[type]], *, component: str) -> int:
    """Run the nameko services that ``services`` imports, in this process, until stopped.

    eventlet patches the process first, before ``services`` imports anything
    that opens sockets or starts threads.
    """
    from autostep.cooperative import patch_process

    patch_process()
    import logging

    from autostep.nameko_runtime import run_services

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(message)s")
    run_services(services(), component=component)
    return 0


# -- management -------------------------------------------------------------


def _session_factory() -> Any:
    from autostep.db import make_engine, make_session_factory

    return make_session_factory(make_engine())


def _project_create(args: argparse.Namespace) -> int:
    from autostep.catalog import create_project
    from autostep.db import unit_of_work
    from autostep.validation import Description, Name, check

    check(Name, args.name, field="name")
    check(Description, args.description, field="--description")
    with unit_of_work(_session_factory()) as session:
        project = create_project(session, args.name, args.description)
        print(project.id)
    return 0


def _project_list(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.queries import list_projects

    with unit_of_work(_session_factory()) as session:
        projects = list_projects(session)
    _table(
        ["NAME", "WORKFLOWS", "CREATED"],
        [[p["name"], str(p["workflows"]), p["created_at"][:19]] for p in projects],
    )
    return 0


def _workflow_list(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.queries import list_workflows

    with unit_of_work(_session_factory()) as session:
        workflows = list_workflows(session, args.project)
    _table(
        ["NAME", "VERSION", "CREATED"],
        [[w["name"], str(w["version"]), w["created_at"][:19]] for w in workflows],
    )
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
    """The definition in ``path`` (YAML, or JSON for ``.json``); usage errors name the spot."""
    import yaml

    try:
        raw = path.read_bytes()
    except OSError as exc:
        _usage_error(f"FILE {path}: {exc.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(raw.decode("utf-8", "replace"), exc.start)
        _usage_error(f"FILE {path}: line {line}, column {column}: not UTF-8 text")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        _usage_error(f"FILE {path}: line {exc.lineno}, column {exc.colno}: {exc.msg}")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        _usage_error(f"FILE {path}: {where}{exc.problem or exc.context}")
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        reason = str(exc).splitlines()[0]
        _usage_error(f"FILE {path}: line {line}, column {column}: {reason}")
    except yaml.YAMLError as exc:
        _usage_error(f"FILE {path}: {str(exc).splitlines()[0]}")
    if not isinstance(data, dict):
        _usage_error(f"FILE {path}: a definition is a mapping")
    return data


def _position(text: str, offset: int) -> tuple[int, int]:
    """Line and column (from 1) of character ``offset`` of ``text``."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _read_input(value: str) -> dict[str, Any]:
    """``--input``: inline JSON, ``@FILE`` or ``-`` (stdin), which must be a JSON object."""
    from autostep.validation import JobInput, check

    if value == "-":
        text, source = sys.stdin.read(), "--input -"
    elif value.startswith("@"):
        source = f"--input {value}"
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _usage_error(f"{source}: {exc.strerror}")
        except UnicodeDecodeError:
            _usage_error(f"{source}: not UTF-8 text")
    else:
        text, source = value, "--input"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        _usage_error(f"{source}: not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}")
    checked: dict[str, Any] = check(JobInput, payload, field=source)
    return checked


def _run_start(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.runs import start_job

    payload = _read_input(args.input)
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
    return 0 if view["status"] in ("succeeded", "running") else 1


def _run_list(args: argparse.Namespace) -> int:
    from autostep.catalog import get_workflow
    from autostep.db import unit_of_work
    from autostep.queries import list_jobs

    if (args.project is None) != (args.workflow is None):
        raise SystemExit("autostep: error: --project and --workflow go together")
    with unit_of_work(_session_factory()) as session:
        workflow_id = None
        if args.workflow is not None:
            workflow_id = get_workflow(session, args.project, args.workflow).id
        jobs = list_jobs(session, workflow_id, limit=args.limit)
    _table(
        ["RUN", "WORKFLOW", "STATUS", "TRIGGER", "CREATED"],
        [[j["id"], j["workflow"], j["status"], j["trigger"], j["created_at"][:19]] for j in jobs],
    )
    return 0


def _run_cancel(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.runs import cancel_job

    with unit_of_work(_session_factory()) as session:
        job = cancel_job(session, args.job_id)
        print(f"job {job.id}  {job.status}")
    return 0


def _run_rerun(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.runs import rerun_job

    factory = _session_factory()
    with unit_of_work(factory) as session:
        job = rerun_job(session, args.job_id, trigger="cli")
        job_id = job.id
    print(job_id)
    if args.follow:
        return _follow(factory, str(job_id))
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Print ``rows`` in aligned columns under ``header``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


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
    rerun = f"  (rerun of {view['rerun_of']})" if view.get("rerun_of") else ""
    lines = [f"job {view['id']}  {view['status']}{rerun}"]
    for process in view["processes"]:
        indent = "    " if process["parent_id"] else "  "
        item = f"[{process['item_index']}]" if process["item_index"] is not None else ""
        attempt = f" attempt {process['attempt']}" if process["attempt"] > 1 else ""
        error = f"  {process['error']}" if process["error"] else ""
        reused = " (reused)" if process.get("reused_from") else ""
        if process.get("waiting"):
            error += f"  waiting: {process['waiting']}"
        mark = _MARK.get(process["status"], "?")
        lines.append(
            f"{indent}{mark} {process['step']}{item} {process['status']}{reused}{attempt}{error}"
        )
    if view["status"] == "succeeded":
        lines.append(f"output: {json.dumps(view['output'])}")
    elif view["error"]:
        lines.append(f"error: {view['error']}")
    return "\n".join(lines)


def _watch(args: argparse.Namespace) -> int:
    import uuid

    kind = "project" if args.project else "workflow" if args.workflow else "job"
    ident = getattr(args, kind)
    try:
        uuid.UUID(ident)
    except ValueError:
        _usage_error(f"--{kind}: {ident!r} is not an id (a UUID)")
    # asyncio and the websocket client load only here, never in an eventlet process
    from autostep.gateway.watch import watch

    return watch(args.url, f"{kind}:{ident}", json_lines=args.json)


def _dev(args: argparse.Namespace) -> int:
    from autostep.devserver import run_dev

    return run_dev(demo=not args.no_demo)


if __name__ == "__main__":
    sys.exit(main())
