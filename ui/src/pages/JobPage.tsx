// One run: its processes (inputs, outputs, errors, attempts, timings), each
// fan-out's items page by page, the graph of its version coloured by each
// step's live status, cancel and rerun. Read over REST, kept live by the
// job's websocket topic.
import { useMutation, useQuery } from "@tanstack/react-query";
import { useEffect, useMemo } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, unwrap, type ProcessOut } from "../api/client";
import { useLive } from "../api/live";
import { ErrorMessage, Json, Loading, Status, shortId, when } from "../components/ui";
import { WorkflowGraph } from "../graph/WorkflowGraph";
import { FanoutItems } from "./FanoutItems";
import { ProcessRow, withLive } from "./ProcessRow";

/** A fan-out's name on the page: its step, and which run of it when there are more. */
function runOf(parent: ProcessOut, fanouts: ProcessOut[]): string {
  const runs = fanouts.filter((p) => p.step === parent.step);
  return runs.length > 1 ? `${parent.step} (run ${runs.indexOf(parent) + 1})` : parent.step;
}

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
function stepStatuses(processes: ProcessOut[]): Record<string, string> {
  const newest: Record<string, ProcessOut> = {};
  for (const p of processes) {
    const held = newest[p.step];
    if (!held || String(p.started_at ?? "") >= String(held.started_at ?? "")) newest[p.step] = p;
  }
  return Object.fromEntries(Object.entries(newest).map(([step, p]) => [step, p.status]));
}

/**
 * The job read over REST (inputs, each fan-out's first items) with the newer
 * state its websocket topic holds. A top-level process the read does not have
 * yet is shown from the websocket and the job read again, for its input and
 * items.
 */
function useJob(jobId: string) {
  const live = useLive(useMemo(() => [`job:${jobId}`], [jobId]));
  const detail = useQuery({
    queryKey: ["job", jobId],
    queryFn: async () =>
      unwrap(await api.GET("/jobs/{job_id}", { params: { path: { job_id: jobId } } })),
  });
  const read = detail.data;
  const held = live.jobs.get(jobId);
  const job = read && held && held.version > read.version ? { ...read, ...held } : (read ?? held);
  const processes = useMemo(() => {
    const shown = (read?.processes ?? []).map((p) => withLive(p, live.processes));
    const known = new Set(shown.map((p) => p.id));
    const unread = [...live.processes.values()].filter((p) => !p.parent_id && !known.has(p.id));
    return {
      shown: [...shown, ...(unread as unknown as ProcessOut[])],
      unread: unread.map((p) => p.id).join(" "),
    };
  }, [read, live.processes]);
  const { refetch } = detail;
  const ready = Boolean(read);
  useEffect(() => {
    if (ready && processes.unread) void refetch();
  }, [ready, processes.unread, refetch]);
  return { job, processes: processes.shown, live, error: detail.error ?? live.error };
}

export function JobPage() {
  const { jobId = "" } = useParams();
  const navigate = useNavigate();
  const { job, processes, live, error } = useJob(jobId);
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
        {error ? <ErrorMessage error={error} /> : <Loading what="the run" />}
      </>
    );
  }
  const fanouts = processes.filter((p) => p.kind === "fanout");
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
                <th scope="col">Input</th>
                <th scope="col">Output or error</th>
              </tr>
            </thead>
            <tbody>
              {processes.map((p) => (
                <ProcessRow key={p.id} process={p} />
              ))}
            </tbody>
          </table>
          {fanouts.map((p) => (
            <FanoutItems
              key={p.id}
              jobId={jobId}
              parent={p}
              live={live.processes}
              label={runOf(p, fanouts)}
            />
          ))}
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
