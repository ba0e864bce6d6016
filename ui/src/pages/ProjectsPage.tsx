// Projects: the list, with create, rename and delete.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { ColumnDef } from "@tanstack/react-table";
import { useState, type FormEvent } from "react";
import { Link } from "react-router";
import { api, unwrap, type Project } from "../api/client";
import { DataTable } from "../components/DataTable";
import { Empty, ErrorMessage, Loading, when } from "../components/ui";

export function useProjects() {
  return useQuery({
    queryKey: ["projects"],
    queryFn: async () => unwrap(await api.GET("/projects")),
  });
}

function RenameCell({ project }: { project: Project }) {
  const client = useQueryClient();
  const [editing, setEditing] = useState(false);
  const [name, setName] = useState(project.name);
  const rename = useMutation({
    mutationFn: async () =>
      unwrap(
        await api.PATCH("/projects/{project_id}", {
          params: { path: { project_id: project.id } },
          body: { name },
        }),
      ),
    onSuccess: () => {
      setEditing(false);
      void client.invalidateQueries({ queryKey: ["projects"] });
    },
  });
  const remove = useMutation({
    mutationFn: async () =>
      unwrap(
        await api.DELETE("/projects/{project_id}", {
          params: { path: { project_id: project.id } },
        }),
      ),
    onSuccess: () => void client.invalidateQueries({ queryKey: ["projects"] }),
  });
  if (editing) {
    return (
      <form
        className="inline"
        onSubmit={(e) => {
          e.preventDefault();
          rename.mutate();
        }}
      >
        <label>
          New name of {project.name}
          <input value={name} onChange={(e) => setName(e.target.value)} autoFocus />
        </label>
        <button type="submit" disabled={rename.isPending}>
          Save
        </button>
        <button type="button" onClick={() => setEditing(false)}>
          Cancel
        </button>
        <ErrorMessage error={rename.error} />
      </form>
    );
  }
  return (
    <div className="actions">
      <button type="button" onClick={() => setEditing(true)} aria-label={`Rename ${project.name}`}>
        Rename
      </button>
      <button
        type="button"
        className="danger"
        aria-label={`Delete ${project.name}`}
        onClick={() => {
          if (window.confirm(`Delete project ${project.name}?`)) remove.mutate();
        }}
      >
        Delete
      </button>
      <ErrorMessage error={remove.error} />
    </div>
  );
}

const columns: ColumnDef<Project, unknown>[] = [
  {
    header: "Name",
    accessorKey: "name",
    cell: ({ row }) => <Link to={`/projects/${row.original.id}`}>{row.original.name}</Link>,
  },
  { header: "Description", accessorKey: "description" },
  { header: "Workflows", accessorKey: "workflows" },
  { header: "Created", accessorKey: "created_at", cell: ({ getValue }) => when(getValue()) },
  { header: "Actions", id: "actions", cell: ({ row }) => <RenameCell project={row.original} /> },
];

export function ProjectsPage() {
  const client = useQueryClient();
  const projects = useProjects();
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const create = useMutation({
    mutationFn: async () => unwrap(await api.POST("/projects", { body: { name, description } })),
    onSuccess: () => {
      setName("");
      setDescription("");
      void client.invalidateQueries({ queryKey: ["projects"] });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    create.mutate();
  };
  return (
    <>
      <h1>Projects</h1>
      <form className="card" onSubmit={submit} aria-labelledby="new-project">
        <h2 id="new-project">New project</h2>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required />
        </label>
        <label>
          Description
          <input value={description} onChange={(e) => setDescription(e.target.value)} />
        </label>
        <button type="submit" disabled={create.isPending}>
          Create project
        </button>
        <ErrorMessage error={create.error} />
      </form>
      {projects.isPending ? <Loading what="projects" /> : null}
      <ErrorMessage error={projects.error} />
      {projects.data && projects.data.length === 0 ? (
        <Empty>No projects yet: create the first one above.</Empty>
      ) : null}
      {projects.data && projects.data.length > 0 ? (
        <DataTable
          data={projects.data}
          columns={columns}
          caption="Projects"
          rowKey={(p) => p.id}
          testId="projects"
        />
      ) : null}
    </>
  );
}
