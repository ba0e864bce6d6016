// One project: its workflows, and a form that creates one with a first step.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { ColumnDef } from "@tanstack/react-table";
import { useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, unwrap, type Workflow } from "../api/client";
import { DataTable } from "../components/DataTable";
import { Empty, ErrorMessage, Loading, when } from "../components/ui";
import { useFunctions } from "../editor/useFunctions";

const columns: ColumnDef<Workflow, unknown>[] = [
  {
    header: "Workflow",
    accessorKey: "name",
    cell: ({ row }) => <Link to={`/workflows/${row.original.id}`}>{row.original.name}</Link>,
  },
  { header: "Description", accessorKey: "description" },
  {
    header: "Published version",
    accessorKey: "version",
    cell: ({ getValue }) => (getValue() == null ? "none" : String(getValue())),
  },
  { header: "Created", accessorKey: "created_at", cell: ({ getValue }) => when(getValue()) },
  {
    header: "Runs",
    id: "runs",
    cell: ({ row }) => (
      <Link
        to={`/runs?project=${row.original.project_id}&workflow=${row.original.id}`}
        aria-label={`Runs of ${row.original.name}`}
      >
        Runs
      </Link>
    ),
  },
];

export function ProjectPage() {
  const { projectId = "" } = useParams();
  const client = useQueryClient();
  const navigate = useNavigate();
  const functions = useFunctions();
  const project = useQuery({
    queryKey: ["project", projectId],
    queryFn: async () =>
      unwrap(await api.GET("/projects/{project_id}", { params: { path: { project_id: projectId } } })),
  });
  const workflows = useQuery({
    queryKey: ["workflows", projectId],
    queryFn: async () =>
      unwrap(
        await api.GET("/projects/{project_id}/workflows", {
          params: { path: { project_id: projectId }, query: {} },
        }),
      ),
  });
  const [name, setName] = useState("");
  const [fn, setFn] = useState("noop");
  const create = useMutation({
    mutationFn: async () =>
      unwrap(
        await api.POST("/projects/{project_id}/workflows", {
          params: { path: { project_id: projectId } },
          body: { name, description: "", max_steps: 10000, steps: [{ name: "start", function: fn }] },
        }),
      ),
    onSuccess: (published) => {
      void client.invalidateQueries({ queryKey: ["workflows", projectId] });
      void navigate(`/workflows/${published.workflow.id}`);
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    create.mutate();
  };
  return (
    <>
      <p className="crumbs">
        <Link to="/">Projects</Link> /
      </p>
      <h1>{project.data ? `Project ${project.data.name}` : "Project"}</h1>
      <ErrorMessage error={project.error} />
      {project.data ? (
        <p>
          {project.data.description} <Link to={`/runs?project=${projectId}`}>Runs of this project</Link>
        </p>
      ) : null}
      <form className="card" onSubmit={submit} aria-labelledby="new-workflow">
        <h2 id="new-workflow">New workflow</h2>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required />
        </label>
        <label>
          First step's function
          <select value={fn} onChange={(e) => setFn(e.target.value)}>
            {(functions.data ?? [{ name: "noop" }]).map((f) => (
              <option key={f.name} value={f.name}>
                {f.name}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" disabled={create.isPending}>
          Create workflow
        </button>
        <ErrorMessage error={create.error} />
      </form>
      <h2>Workflows</h2>
      {workflows.isPending ? <Loading what="workflows" /> : null}
      <ErrorMessage error={workflows.error} />
      {workflows.data && workflows.data.length === 0 ? (
        <Empty>No workflows in this project yet.</Empty>
      ) : null}
      {workflows.data && workflows.data.length > 0 ? (
        <DataTable
          data={workflows.data}
          columns={columns}
          caption="Workflows"
          rowKey={(w) => w.id}
          testId="workflows"
        />
      ) : null}
    </>
  );
}
