// The live grid of runs: filtered by project, workflow and status (kept in
// the URL, so a filtered grid is a link), kept current over /ws.
import { useQuery } from "@tanstack/react-query";
import type { ColumnDef } from "@tanstack/react-table";
import { useMemo } from "react";
import { Link, useSearchParams } from "react-router";
import { api, unwrap } from "../api/client";
import { useLive, type Row } from "../api/live";
import { DataTable } from "../components/DataTable";
import { Empty, ErrorMessage, Loading, Status, shortId, when } from "../components/ui";
import { useProjects } from "./ProjectsPage";

const STATUSES = ["running", "succeeded", "failed", "cancelled"];

function WorkflowName({ id, known }: { id: string; known: unknown }) {
  const workflow = useQuery({
    queryKey: ["workflow", id],
    queryFn: async () =>
      unwrap(await api.GET("/workflows/{workflow_id}", { params: { path: { workflow_id: id } } })),
    enabled: typeof known !== "string",
    staleTime: Infinity,
  });
  return <>{typeof known === "string" ? known : (workflow.data?.name ?? shortId(id))}</>;
}

const columns: ColumnDef<Row, unknown>[] = [
  {
    header: "Run",
    id: "id",
    cell: ({ row }) => (
      <Link to={`/jobs/${row.original.id}`} aria-label={`Run ${row.original.id}`}>
        {shortId(row.original.id)}
      </Link>
    ),
  },
  {
    header: "Workflow",
    id: "workflow",
    cell: ({ row }) => (
      <WorkflowName id={String(row.original.workflow_id)} known={row.original.workflow} />
    ),
  },
  { header: "Status", id: "status", cell: ({ row }) => <Status status={String(row.original.status)} /> },
  { header: "Trigger", id: "trigger", cell: ({ row }) => String(row.original.trigger ?? "") },
  { header: "Steps", id: "steps", cell: ({ row }) => String(row.original.steps ?? "") },
  { header: "Started", id: "created", cell: ({ row }) => when(row.original.created_at) },
  { header: "Finished", id: "finished", cell: ({ row }) => when(row.original.finished_at) },
  {
    header: "Rerun of",
    id: "rerun",
    cell: ({ row }) =>
      row.original.rerun_of ? (
        <Link to={`/jobs/${String(row.original.rerun_of)}`}>{shortId(String(row.original.rerun_of))}</Link>
      ) : (
        ""
      ),
  },
];

export function RunsPage() {
  const [params, setParams] = useSearchParams();
  const project = params.get("project") ?? "";
  const workflow = params.get("workflow") ?? "";
  const status = params.get("status") ?? "";
  const projects = useProjects();
  const workflows = useQuery({
    queryKey: ["workflows", project],
    queryFn: async () =>
      unwrap(
        await api.GET("/projects/{project_id}/workflows", {
          params: { path: { project_id: project }, query: {} },
        }),
      ),
    enabled: Boolean(project),
  });
  const topics = useMemo(() => {
    if (workflow) return [`workflow:${workflow}`];
    if (project) return [`project:${project}`];
    return (projects.data ?? []).slice(0, 100).map((p) => `project:${p.id}`);
  }, [project, workflow, projects.data]);
  const live = useLive(topics);
  const rows = useMemo(
    () =>
      [...live.jobs.values()]
        .filter((job) => !status || job.status === status)
        .filter((job) => !workflow || job.workflow_id === workflow)
        .sort((a, b) =>
          String(b.created_at ?? "9999").localeCompare(String(a.created_at ?? "9999")),
        ),
    [live.jobs, status, workflow],
  );
  const setFilter = (key: string, value: string) => {
    const next = new URLSearchParams(params);
    if (value) next.set(key, value);
    else next.delete(key);
    if (key === "project") next.delete("workflow");
    setParams(next);
  };
  return (
    <>
      <h1>Runs</h1>
      <form className="filters" aria-label="Filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Project
          <select value={project} onChange={(e) => setFilter("project", e.target.value)}>
            <option value="">all</option>
            {(projects.data ?? []).map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Workflow
          <select
            value={workflow}
            onChange={(e) => setFilter("workflow", e.target.value)}
            disabled={!project}
          >
            <option value="">all</option>
            {(workflows.data ?? []).map((w) => (
              <option key={w.id} value={w.id}>
                {w.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select value={status} onChange={(e) => setFilter("status", e.target.value)}>
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <span className="muted" role="status" data-testid="live">
          {live.connected ? "live" : "connecting…"}
        </span>
      </form>
      <ErrorMessage error={projects.error ?? live.error} />
      {topics.length > 0 && live.snapshots < topics.length ? <Loading what="runs" /> : null}
      {(topics.length === 0 && projects.data) || (live.snapshots >= topics.length && rows.length === 0) ? (
        <Empty>No runs match these filters yet.</Empty>
      ) : null}
      {rows.length > 0 ? (
        <DataTable data={rows} columns={columns} caption="Runs" rowKey={(r) => r.id} testId="runs" />
      ) : null}
    </>
  );
}
