// A workflow: the editor on its draft beside its graph, a run form, and its
// triggers. The draft is saved whole (PUT with If-Match, so a change made
// elsewhere meanwhile is refused, not overwritten), then published; a
// refused publish shows each error on the field the API names.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useMemo, useState } from "react";
import { Link, NavLink, useNavigate, useParams } from "react-router";
import { api, ApiError, etagOf, unwrap, type WorkflowDefinition } from "../api/client";
import { ErrorMessage, Loading } from "../components/ui";
import { JsonField, type FieldErrors } from "../editor/fields";
import { StepEditor } from "../editor/StepEditor";
import { useFunctions } from "../editor/useFunctions";
import { WorkflowGraph } from "../graph/WorkflowGraph";
import { TriggersPanel } from "./TriggersPanel";

function fieldErrors(error: unknown): FieldErrors {
  if (!(error instanceof ApiError)) return {};
  return Object.fromEntries((error.problem.errors ?? []).map((e) => [e.field, e.message]));
}

function RunForm({ workflowId }: { workflowId: string }) {
  const navigate = useNavigate();
  const [input, setInput] = useState<Record<string, unknown> | null>({});
  const start = useMutation({
    mutationFn: async () =>
      unwrap(
        await api.POST("/workflows/{workflow_id}/jobs", {
          params: { path: { workflow_id: workflowId } },
          body: { input: input ?? {} },
        }),
      ),
    onSuccess: (job) => void navigate(`/jobs/${job.id}`),
  });
  return (
    <form
      className="card"
      aria-labelledby="run-title"
      onSubmit={(e) => {
        e.preventDefault();
        start.mutate();
      }}
    >
      <h2 id="run-title">Start a run of the published version</h2>
      <JsonField path="input" label="Input (JSON object)" value={{}} onChange={setInput} errors={fieldErrors(start.error)} />
      <button type="submit" disabled={start.isPending}>
        Start run
      </button>
      <ErrorMessage error={start.error} />
    </form>
  );
}

function Editor({ workflowId }: { workflowId: string }) {
  const client = useQueryClient();
  const functions = useFunctions();
  const draft = useQuery({
    queryKey: ["draft", workflowId],
    queryFn: async () => {
      const answer = await api.GET("/workflows/{workflow_id}/draft", {
        params: { path: { workflow_id: workflowId } },
      });
      return { draft: unwrap(answer), etag: etagOf(answer.response) };
    },
  });
  const [definition, setDefinition] = useState<WorkflowDefinition | null>(null);
  const [etag, setEtag] = useState("");
  const [dirty, setDirty] = useState(false);
  const [sample, setSample] = useState<Record<string, unknown>>({ output: {}, input: {}, prev: {} });
  const [notice, setNotice] = useState("");
  useEffect(() => {
    if (draft.data) {
      setDefinition(draft.data.draft.definition as unknown as WorkflowDefinition);
      setEtag(draft.data.etag);
      setDirty(false);
    }
  }, [draft.data]);

  const save = async (): Promise<string> => {
    if (!definition || !dirty) return etag;
    const answer = await api.PUT("/workflows/{workflow_id}/draft", {
      params: { path: { workflow_id: workflowId }, header: { "If-Match": etag } },
      body: definition,
    });
    unwrap(answer);
    const next = etagOf(answer.response);
    setEtag(next);
    setDirty(false);
    return next;
  };
  const saveDraft = useMutation({
    mutationFn: save,
    onSuccess: () => setNotice("Draft saved."),
  });
  const publish = useMutation({
    mutationFn: async () => {
      const current = await save();
      const answer = await api.POST("/workflows/{workflow_id}/draft/publish", {
        params: { path: { workflow_id: workflowId }, header: { "If-Match": current } },
      });
      const published = unwrap(answer);
      setEtag(etagOf(answer.response));
      return published;
    },
    onSuccess: (published) => {
      const warnings = published.warnings.length ? ` Warnings: ${published.warnings.join("; ")}` : "";
      setNotice(`Published version ${published.version.number}.${warnings}`);
      void client.invalidateQueries({ queryKey: ["workflow", workflowId] });
    },
  });
  const error = publish.error ?? saveDraft.error;
  const errors = fieldErrors(error);
  const steps = useMemo(() => definition?.steps ?? [], [definition]);
  const names = steps.map((s) => s.name);

  if (draft.isPending) return <Loading what="the draft" />;
  if (draft.error) return <ErrorMessage error={draft.error} />;
  if (!definition) return null;
  const change = (next: WorkflowDefinition) => {
    setDefinition(next);
    setDirty(true);
    setNotice("");
  };
  const setStep = (i: number, step: (typeof steps)[number]) =>
    change({ ...definition, steps: steps.map((s, j) => (j === i ? step : s)) });
  const move = (i: number, delta: number) => {
    const j = i + delta;
    if (j < 0 || j >= steps.length) return;
    const copy = [...steps];
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
    change({ ...definition, steps: copy });
  };
  const addStep = () => {
    let n = steps.length + 1;
    while (names.includes(`step${n}`)) n += 1;
    change({ ...definition, steps: [...steps, { name: `step${n}`, function: "noop", config: {}, next: [] }] });
  };
  return (
    <div className="split">
      <div>
        <div className="toolbar">
          <button type="button" onClick={() => saveDraft.mutate()} disabled={!dirty || saveDraft.isPending}>
            Save draft
          </button>
          <button type="button" className="primary" onClick={() => publish.mutate()} disabled={publish.isPending}>
            Publish
          </button>
          <span role="status" aria-live="polite" data-testid="notice">
            {dirty ? "Unsaved changes" : notice}
          </span>
        </div>
        <ErrorMessage error={error} />
        {error instanceof ApiError && error.problem.status === 412 ? (
          <button type="button" onClick={() => void draft.refetch()}>
            Reload the draft
          </button>
        ) : null}
        <JsonField
          path="sample"
          label="Sample payload for checking conditions (output, input, prev)"
          value={sample}
          onChange={(v) => v && setSample(v)}
          errors={{}}
        />
        {steps.map((step, i) => (
          <StepEditor
            key={i}
            index={i}
            step={step}
            stepNames={names}
            functions={functions.data ?? []}
            sample={sample}
            errors={errors}
            onChange={(s) => setStep(i, s)}
            onRemove={() => change({ ...definition, steps: steps.filter((_, j) => j !== i) })}
            onMove={(delta) => move(i, delta)}
          />
        ))}
        <button type="button" onClick={addStep}>
          Add step
        </button>
      </div>
      <section aria-labelledby="graph-title" className="sticky">
        <h2 id="graph-title">Graph of the draft</h2>
        <WorkflowGraph steps={steps} label="steps and transitions of the draft" />
      </section>
    </div>
  );
}

export function WorkflowPage({ tab }: { tab: "editor" | "triggers" }) {
  const { workflowId = "" } = useParams();
  const workflow = useQuery({
    queryKey: ["workflow", workflowId],
    queryFn: async () =>
      unwrap(await api.GET("/workflows/{workflow_id}", { params: { path: { workflow_id: workflowId } } })),
  });
  return (
    <>
      <p className="crumbs">
        <Link to="/">Projects</Link> /{" "}
        {workflow.data ? <Link to={`/projects/${workflow.data.project_id}`}>project</Link> : null} /
      </p>
      <h1>Workflow {workflow.data?.name ?? ""}</h1>
      <ErrorMessage error={workflow.error} />
      {workflow.data ? (
        <p>
          Published version: {workflow.data.version ?? "none"} ·{" "}
          <Link to={`/runs?project=${workflow.data.project_id}&workflow=${workflowId}`}>Runs</Link>
        </p>
      ) : null}
      <nav className="tabs" aria-label="Workflow">
        <NavLink to={`/workflows/${workflowId}`} end>
          Editor
        </NavLink>
        <NavLink to={`/workflows/${workflowId}/triggers`}>Triggers</NavLink>
      </nav>
      {tab === "editor" ? (
        <>
          <Editor workflowId={workflowId} />
          <RunForm workflowId={workflowId} />
        </>
      ) : (
        <TriggersPanel workflowId={workflowId} />
      )}
    </>
  );
}
