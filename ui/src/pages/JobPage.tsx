// One run: its processes (outputs, errors, attempts, timings), the graph of
// its version coloured by each step's live status, cancel and rerun.
import { useMutation, useQuery } from "@tanstack/react-query";
import { useMemo } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, unwrap } from "../api/client";
import { useLive, type Row } from "../api/live";
import { ErrorMessage, Json, Loading, Status, shortId, when } from "../components/ui";
import { WorkflowGraph } from "../graph/WorkflowGraph";

function useVersionSteps(workflowId: string, versionId: string) {
  return useQuery({
    queryKey: ["version", workflowId, versionId],
    enabled: Boolean(workflowId && versionId),
    staleTime: Infinity,
    queryFn: async () => {
      const versions = unwrap(
        await api.GET("/workflows/{workflow_id}/versions", {
          params: { path: { workflow_id: workflowId } },
        }),
      );
      const version = versions.find((v) => v.id === versionId);
      if (!version) throw new Error("this run's workflow version is gone");
      return unwrap(
        await api.GET("/workflows/{workflow_id}/versions/{number}", {
          params: { path: { workflow_id: workflowId, number: version.number } },
        }),
      );
    },
  });
}

/** Each step's status: its newest top-level process (a fan-out's parent stands for it). */
function stepStatuses(processes: Row[]): Record<string, string> {
  const newest: Record<string, Row> = {};
  for (const p of processes) {
    if (p.parent_id) continue;
    const step = String(p.step);
    const held = newest[step];
    if (!held || String(p.started_at ?? "") >= String(held.started_at ?? "")) newest[step] = p;
  }
  return Object.fromEntries(Object.entries(newest).map(([step, p]) => [step, String(p.status)]));
}

export function JobPage() {
  const { jobId = "" } = useParams();
  const navigate = useNavigate();
  const live = useLive(useMemo(() => [`job:${jobId}`], [jobId]));
  const job = live.jobs.get(jobId);
  const processes = useMemo(
    () =>
      [...live.processes.values()].sort(
        (a, b) =>
          String(a.started_at ?? "~").localeCompare(String(b.started_at ?? "~")) ||
          Number(a.item_index ?? -1) - Number(b.item_index ?? -1),
      ),
    [live.processes],
  );
  const statuses = useMemo(() => stepStatuses(processes), [processes]);
  const version = useVersionSteps(String(job?.workflow_id ?? ""), String(job?.version_id ?? ""));
  const cancel = useMutation({
    mutationFn: async () =>
      unwrap(await api.POST("/jobs/{job_id}/cancel", { params: { path: { job_id: jobId } } })),
  });
  const rerun = useMutation({
    mutationFn: async () =>
      unwrap(await api.POST("/jobs/{job_id}/rerun", { params: { path: { job_id: jobId } } })),
    onSuccess: (created) => void navigate(`/jobs/${created.id}`),
  });
  if (!job) {
    return (
      <>
        <h1>Run {shortId(jobId)}</h1>
        {live.error ? <ErrorMessage error={live.error} /> : <Loading what="the run" />}
      </>
    );
  }
  const status = String(job.status);
  return (
    <>
      <p className="crumbs">
        <Link to="/runs">Runs</Link> /
      </p>
      <h1>
        Run {shortId(jobId)} <Status status={status} />
      </h1>
      <dl className="facts">
        <dt>Workflow</dt>
        <dd>
          <Link to={`/workflows/${String(job.workflow_id)}`}>
            {version.data ? `version ${version.data.number}` : shortId(String(job.workflow_id))}
          </Link>
        </dd>
        <dt>Trigger</dt>
        <dd>{String(job.trigger)}</dd>
        <dt>Started</dt>
        <dd>{when(job.created_at)}</dd>
        <dt>Finished</dt>
        <dd>{when(job.finished_at) || "not yet"}</dd>
        {job.rerun_of ? (
          <>
            <dt>Rerun of</dt>
            <dd>
              <Link to={`/jobs/${String(job.rerun_of)}`}>{shortId(String(job.rerun_of))}</Link>
            </dd>
          </>
        ) : null}
      </dl>
      <div className="actions">
        <button
          type="button"
          onClick={() => cancel.mutate()}
          disabled={status !== "running" || cancel.isPending}
        >
          Cancel run
        </button>
        <button
          type="button"
          onClick={() => rerun.mutate()}
          disabled={!(status === "failed" || status === "cancelled") || rerun.isPending}
        >
          Rerun from failed step
        </button>
      </div>
      <ErrorMessage error={cancel.error ?? rerun.error} />
      {job.error ? (
        <div className="alert" role="alert">
          {String(job.error)}
        </div>
      ) : null}
      <div className="split">
        <section aria-labelledby="processes">
          <h2 id="processes">Steps</h2>
          <table data-testid="processes">
            <caption className="visually-hidden">Processes of this run</caption>
            <thead>
              <tr>
                <th scope="col">Step</th>
                <th scope="col">Function</th>
                <th scope="col">Status</th>
                <th scope="col">Attempt</th>
                <th scope="col">Started</th>
                <th scope="col">Finished</th>
                <th scope="col">Output or error</th>
              </tr>
            </thead>
            <tbody>
              {processes.map((p) => (
                <tr key={p.id} data-step={String(p.step)}>
                  <td>
                    {String(p.step)}
                    {p.item_index != null ? ` [${String(p.item_index)}]` : ""}
                    {p.reused_from ? " (reused)" : ""}
                  </td>
                  <td>{String(p.function)}</td>
                  <td>
                    <Status status={String(p.status)} />
                    {p.waiting ? <div className="muted">{String(p.waiting)}</div> : null}
                  </td>
                  <td>{String(p.attempt)}</td>
                  <td>{when(p.started_at)}</td>
                  <td>{when(p.finished_at)}</td>
                  <td>
                    {p.error ? <span className="error-text">{String(p.error)}</span> : null}
                    {p.output != null ? (
                      <details>
                        <summary>output</summary>
                        <Json value={p.output} label={`output of ${String(p.step)}`} />
                      </details>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <h2>Input</h2>
          <Json value={job.input} label="input of the run" />
          {job.output != null ? (
            <>
              <h2>Output</h2>
              <Json value={job.output} label="output of the run" />
            </>
          ) : null}
        </section>
        <section aria-labelledby="graph-title">
          <h2 id="graph-title">Graph</h2>
          <ErrorMessage error={version.error} />
          {version.data ? (
            <WorkflowGraph
              steps={version.data.steps}
              statuses={statuses}
              label="steps of this run by status"
            />
          ) : (
            <Loading what="the graph" />
          )}
        </section>
      </div>
    </>
  );
}
