// A workflow's triggers: cron (with its next fire times), webhook (its URL
// and a curl command, the token shown once) and manual (fire with an input).
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useNavigate } from "react-router";
import { api, ApiError, unwrap } from "../api/client";
import { Empty, ErrorMessage, Loading, when } from "../components/ui";
import { Field, JsonField, type FieldErrors } from "../editor/fields";

function fieldErrors(error: unknown): FieldErrors {
  if (!(error instanceof ApiError)) return {};
  return Object.fromEntries((error.problem.errors ?? []).map((e) => [e.field, e.message]));
}

function TriggerDetail({ id }: { id: string }) {
  const client = useQueryClient();
  const navigate = useNavigate();
  const [input, setInput] = useState<Record<string, unknown> | null>({});
  const detail = useQuery({
    queryKey: ["trigger", id],
    queryFn: async () =>
      unwrap(await api.GET("/triggers/{trigger_id}", { params: { path: { trigger_id: id } } })),
  });
  const refresh = () => {
    void client.invalidateQueries({ queryKey: ["triggers"] });
    void client.invalidateQueries({ queryKey: ["trigger", id] });
  };
  const toggle = useMutation({
    mutationFn: async (enabled: boolean) =>
      unwrap(await api.PATCH("/triggers/{trigger_id}", { params: { path: { trigger_id: id } }, body: { enabled } })),
    onSuccess: refresh,
  });
  const remove = useMutation({
    mutationFn: async () =>
      unwrap(await api.DELETE("/triggers/{trigger_id}", { params: { path: { trigger_id: id } } })),
    onSuccess: refresh,
  });
  const fire = useMutation({
    mutationFn: async () =>
      unwrap(
        await api.POST("/triggers/{trigger_id}/fire", {
          params: { path: { trigger_id: id } },
          body: { input: input ?? {} },
        }),
      ),
    onSuccess: (job) => void navigate(`/jobs/${job.id}`),
  });
  if (detail.isPending) return <Loading what="the trigger" />;
  if (detail.error) return <ErrorMessage error={detail.error} />;
  const t = detail.data;
  const hook = `${window.location.origin}/hooks/${t.id}`;
  return (
    <section className="card" aria-label={`Trigger ${t.name}`} data-trigger={t.name}>
      <h3>
        {t.name} <span className="muted">({t.kind}, {t.enabled ? "enabled" : "disabled"})</span>
      </h3>
      {t.kind === "cron" ? (
        <>
          <p>
            Schedule <code>{String(t.config.schedule)}</code> in {String(t.config.time_zone)}
          </p>
          <h4>Next fire times</h4>
          {t.next_fire_times.length ? (
            <ol data-testid="fire-times">
              {t.next_fire_times.map((f) => (
                <li key={f}>
                  <time dateTime={f}>{when(f)}</time>
                </li>
              ))}
            </ol>
          ) : (
            <Empty>None while disabled.</Empty>
          )}
        </>
      ) : null}
      {t.kind === "webhook" ? (
        <>
          <p>
            URL: <code>{hook}</code>
          </p>
          <pre className="json" tabIndex={0} aria-label="curl example">
            {`curl -X POST ${hook} -H 'X-Autostep-Token: <token>' -H 'Content-Type: application/json' -d '{}'`}
          </pre>
        </>
      ) : null}
      {t.kind === "manual" ? (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            fire.mutate();
          }}
        >
          <JsonField path="input" label="Input (merged into the preset)" value={{}} onChange={setInput} errors={fieldErrors(fire.error)} />
          <button type="submit" disabled={fire.isPending}>
            Run now
          </button>
          <ErrorMessage error={fire.error} />
        </form>
      ) : null}
      {t.ticks.length ? (
        <>
          <h4>Last ticks</h4>
          <ul>
            {t.ticks.map((tick) => (
              <li key={tick.scheduled_at}>
                {when(tick.scheduled_at)}: {tick.outcome}
                {tick.reason ? ` (${tick.reason})` : ""}
              </li>
            ))}
          </ul>
        </>
      ) : null}
      <div className="actions">
        <button type="button" onClick={() => toggle.mutate(!t.enabled)}>
          {t.enabled ? "Disable" : "Enable"}
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => {
            if (window.confirm(`Delete trigger ${t.name}?`)) remove.mutate();
          }}
        >
          Delete
        </button>
      </div>
      <ErrorMessage error={toggle.error ?? remove.error} />
    </section>
  );
}

type Kind = "cron" | "webhook" | "manual";

export function TriggersPanel({ workflowId }: { workflowId: string }) {
  const client = useQueryClient();
  const triggers = useQuery({
    queryKey: ["triggers", workflowId],
    queryFn: async () => unwrap(await api.GET("/triggers", { params: { query: { workflow: workflowId } } })),
  });
  const [name, setName] = useState("");
  const [kind, setKind] = useState<Kind>("cron");
  const [schedule, setSchedule] = useState("*/5 * * * *");
  const [zone, setZone] = useState("UTC");
  const [preset, setPreset] = useState<Record<string, unknown> | null>({});
  const [created, setCreated] = useState<{ token: string | null; curl: string | null } | null>(null);
  const create = useMutation({
    mutationFn: async () => {
      const base = { workflow_id: workflowId, name, enabled: true };
      const body =
        kind === "cron"
          ? { ...base, kind, config: { schedule, time_zone: zone, concurrency: "allow" as const, catch_up: "latest" as const, catch_up_limit: 10 } }
          : kind === "webhook"
            ? { ...base, kind, config: {} }
            : { ...base, kind, config: { input: preset ?? {} } };
      return unwrap(await api.POST("/triggers", { body }));
    },
    onSuccess: (trigger) => {
      setCreated({ token: trigger.token, curl: trigger.curl });
      setName("");
      void client.invalidateQueries({ queryKey: ["triggers", workflowId] });
    },
  });
  const errors = fieldErrors(create.error);
  return (
    <>
      <form
        className="card"
        aria-labelledby="new-trigger"
        onSubmit={(e) => {
          e.preventDefault();
          create.mutate();
        }}
      >
        <h2 id="new-trigger">New trigger</h2>
        <Field path="name" label="Name" errors={errors}>
          {(props) => <input {...props} value={name} onChange={(e) => setName(e.target.value)} required />}
        </Field>
        <Field path="kind" label="Kind" errors={errors}>
          {(props) => (
            <select {...props} value={kind} onChange={(e) => setKind(e.target.value as Kind)}>
              <option value="cron">cron</option>
              <option value="webhook">webhook</option>
              <option value="manual">manual</option>
            </select>
          )}
        </Field>
        {kind === "cron" ? (
          <>
            <Field path="config.schedule" label="Schedule (5 fields or @daily …)" errors={errors}>
              {(props) => <input {...props} className="code" value={schedule} onChange={(e) => setSchedule(e.target.value)} />}
            </Field>
            <Field path="config.time_zone" label="Time zone (IANA)" errors={errors}>
              {(props) => <input {...props} value={zone} onChange={(e) => setZone(e.target.value)} />}
            </Field>
          </>
        ) : null}
        {kind === "manual" ? (
          <JsonField path="config.input" label="Preset input (JSON object)" value={{}} onChange={setPreset} errors={errors} />
        ) : null}
        <button type="submit" disabled={create.isPending}>
          Create trigger
        </button>
        <ErrorMessage error={create.error} />
        {created?.token ? (
          <div className="notice" role="status">
            <p>The webhook's token, shown this once: <code data-testid="token">{created.token}</code></p>
            {created.curl ? (
              <pre className="json" tabIndex={0} aria-label="curl command">
                {created.curl}
              </pre>
            ) : null}
          </div>
        ) : null}
      </form>
      <h2>Triggers</h2>
      {triggers.isPending ? <Loading what="triggers" /> : null}
      <ErrorMessage error={triggers.error} />
      {triggers.data && triggers.data.items.length === 0 ? <Empty>No triggers yet.</Empty> : null}
      {(triggers.data?.items ?? []).map((t) => (
        <TriggerDetail key={t.id} id={t.id} />
      ))}
    </>
  );
}
