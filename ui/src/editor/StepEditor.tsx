// One step of the draft: name, function (from the catalogue), its config
// form, input mapping, for_each, retry policy and timeout, transitions.
import type { FunctionOut, StepDefinition, TransitionDefinition } from "../api/client";
import { CelField, Field, JsonField, type FieldErrors } from "./fields";
import { SchemaForm } from "./SchemaForm";

function numberOrNull(text: string): number | null {
  return text === "" ? null : Number(text);
}

export function StepEditor({
  index,
  step,
  stepNames,
  functions,
  sample,
  errors,
  onChange,
  onRemove,
  onMove,
}: {
  index: number;
  step: StepDefinition;
  stepNames: string[];
  functions: FunctionOut[];
  sample: Record<string, unknown>;
  errors: FieldErrors;
  onChange: (step: StepDefinition) => void;
  onRemove: () => void;
  onMove: (delta: number) => void;
}) {
  const path = `steps[${index}]`;
  const fn = functions.find((f) => f.name === step.function);
  const next = step.next ?? [];
  const set = (patch: Partial<StepDefinition>) => onChange({ ...step, ...patch });
  const setTransition = (i: number, t: TransitionDefinition) =>
    set({ next: next.map((old, j) => (j === i ? t : old)) });
  return (
    <section className="card step" aria-label={`Step ${step.name}`} data-step-editor={step.name}>
      <div className="step-head">
        <h3>
          Step {index + 1}: {step.name || "(unnamed)"}
        </h3>
        <div className="actions">
          <button type="button" onClick={() => onMove(-1)} disabled={index === 0} aria-label={`Move ${step.name} up`}>
            ↑
          </button>
          <button type="button" onClick={() => onMove(1)} aria-label={`Move ${step.name} down`}>
            ↓
          </button>
          <button type="button" className="danger" onClick={onRemove} aria-label={`Remove step ${step.name}`}>
            Remove
          </button>
        </div>
      </div>
      <div className="grid2">
        <Field path={`${path}.name`} label="Name" errors={errors}>
          {(props) => <input {...props} value={step.name} onChange={(e) => set({ name: e.target.value })} />}
        </Field>
        <Field
          path={`${path}.function`}
          label="Function"
          errors={errors}
          hint={fn ? `${fn.description || fn.module}${fn.live ? "" : " (no live runner)"}` : undefined}
        >
          {(props) => (
            <select {...props} value={step.function} onChange={(e) => set({ function: e.target.value, config: {} })}>
              {fn ? null : <option value={step.function}>{step.function} (not in the catalogue)</option>}
              {functions.map((f) => (
                <option key={f.name} value={f.name}>
                  {f.name}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      <SchemaForm
        schema={fn?.input_schema}
        path={`${path}.config`}
        value={step.config ?? {}}
        onChange={(config) => set({ config })}
        errors={errors}
      />
      <JsonField
        path={`${path}.input`}
        label="Input mapping: field → CEL over input, prev (and item, index in a fan-out)"
        value={step.input}
        onChange={(input) => set({ input: input as Record<string, string> | null })}
        errors={errors}
      />
      <CelField
        path={`${path}.for_each`}
        label="For each (CEL list over input, prev): fans out one process per item"
        value={step.for_each ?? ""}
        onChange={(v) => set({ for_each: v || null })}
        sample={sample}
        errors={errors}
      />
      <div className="grid3">
        <Field path={`${path}.retries`} label="Retries" errors={errors}>
          {(props) => (
            <input {...props} type="number" min={0} value={step.retries ?? ""} onChange={(e) => set({ retries: numberOrNull(e.target.value) })} />
          )}
        </Field>
        <Field path={`${path}.backoff`} label="Backoff (s)" errors={errors}>
          {(props) => (
            <input {...props} type="number" min={0} step="any" value={step.backoff ?? ""} onChange={(e) => set({ backoff: numberOrNull(e.target.value) })} />
          )}
        </Field>
        <Field path={`${path}.timeout`} label="Timeout (s)" errors={errors}>
          {(props) => (
            <input {...props} type="number" min={0} step="any" value={step.timeout ?? ""} onChange={(e) => set({ timeout: numberOrNull(e.target.value) })} />
          )}
        </Field>
      </div>
      <fieldset>
        <legend>Transitions (the first whose condition holds is taken)</legend>
        {next.length === 0 ? <p className="muted">None: the run ends after this step.</p> : null}
        {next.map((t, i) => (
          <div className="transition" key={i} data-transition={`${path}.next[${i}]`}>
            <Field path={`${path}.next[${i}].to`} label={`Transition ${i + 1}: to`} errors={errors}>
              {(props) => (
                <select {...props} value={t.to} onChange={(e) => setTransition(i, { ...t, to: e.target.value })}>
                  {stepNames.includes(t.to) ? null : <option value={t.to}>{t.to || "(choose)"}</option>}
                  {stepNames.map((n) => (
                    <option key={n} value={n}>
                      {n}
                    </option>
                  ))}
                </select>
              )}
            </Field>
            <CelField
              path={`${path}.next[${i}].when`}
              label={`Transition ${i + 1}: when (CEL over output, input; empty: always)`}
              value={t.when ?? ""}
              onChange={(v) => setTransition(i, { ...t, when: v || null })}
              sample={sample}
              errors={errors}
            />
            <button
              type="button"
              className="danger"
              onClick={() => set({ next: next.filter((_, j) => j !== i) })}
              aria-label={`Remove transition ${i + 1} of ${step.name}`}
            >
              Remove transition
            </button>
          </div>
        ))}
        <button
          type="button"
          onClick={() => set({ next: [...next, { to: stepNames.find((n) => n !== step.name) ?? "", when: null }] })}
          aria-label={`Add a transition to ${step.name}`}
        >
          Add transition
        </button>
      </fieldset>
    </section>
  );
}
