// Form fields of the editor. Each is named by its path in the definition
// (`steps[1].next[0].when`), the name the API gives a bad field, so an error
// from a publish is shown on the field that caused it.
import { useEffect, useId, useState, type ReactNode } from "react";
import { api, unwrap } from "../api/client";

export type FieldErrors = Record<string, string>;

export function Field({
  path,
  label,
  errors,
  hint,
  children,
}: {
  path: string;
  label: string;
  errors: FieldErrors;
  hint?: ReactNode;
  children: (props: {
    id: string;
    "aria-invalid": boolean;
    "aria-describedby"?: string;
    "data-field": string;
  }) => ReactNode;
}) {
  const id = useId();
  const error = errors[path];
  const described = [error ? `${id}-error` : "", hint ? `${id}-hint` : ""].filter(Boolean).join(" ");
  return (
    <div className={`field${error ? " invalid" : ""}`}>
      <label htmlFor={id}>{label}</label>
      {children({
        id,
        "aria-invalid": Boolean(error),
        "aria-describedby": described || undefined,
        "data-field": path,
      })}
      {hint ? (
        <div id={`${id}-hint`} className="hint">
          {hint}
        </div>
      ) : null}
      {error ? (
        <div id={`${id}-error`} className="field-error" data-error-for={path}>
          {error}
        </div>
      ) : null}
    </div>
  );
}

type Verdict = { ok: boolean; result?: unknown; error?: string | null } | null;

/** A CEL field checked live against the sample payload through /conditions/test. */
export function CelField({
  path,
  label,
  value,
  onChange,
  sample,
  errors,
}: {
  path: string;
  label: string;
  value: string;
  onChange: (value: string) => void;
  sample: Record<string, unknown>;
  errors: FieldErrors;
}) {
  const [verdict, setVerdict] = useState<Verdict>(null);
  useEffect(() => {
    if (!value.trim()) {
      setVerdict(null);
      return undefined;
    }
    let current = true;
    const timer = window.setTimeout(() => {
      void api
        .POST("/conditions/test", { body: { expression: value, sample } })
        .then((answer) => {
          if (current) setVerdict(unwrap(answer));
        })
        .catch((error: unknown) => {
          if (current) setVerdict({ ok: false, error: String(error) });
        });
    }, 300);
    return () => {
      current = false;
      window.clearTimeout(timer);
    };
  }, [value, sample]);
  const liveError = verdict && !verdict.ok ? (verdict.error ?? "invalid") : undefined;
  const shown: FieldErrors = liveError && !errors[path] ? { ...errors, [path]: liveError } : errors;
  const hint =
    verdict && verdict.ok ? (
      <span data-verdict-for={path}>on the sample: {JSON.stringify(verdict.result)}</span>
    ) : undefined;
  return (
    <Field path={path} label={label} errors={shown} hint={hint}>
      {(props) => (
        <input
          {...props}
          className="code"
          value={value}
          spellCheck={false}
          onChange={(e) => onChange(e.target.value)}
        />
      )}
    </Field>
  );
}

/** A JSON object typed in a textarea; shows its parse error on the field. */
export function JsonField({
  path,
  label,
  value,
  onChange,
  errors,
}: {
  path: string;
  label: string;
  value: unknown;
  onChange: (value: Record<string, unknown> | null) => void;
  errors: FieldErrors;
}) {
  const [text, setText] = useState(() => (value == null ? "" : JSON.stringify(value, null, 1)));
  const [parseError, setParseError] = useState<string | null>(null);
  const shown = parseError ? { ...errors, [path]: parseError } : errors;
  return (
    <Field path={path} label={label} errors={shown}>
      {(props) => (
        <textarea
          {...props}
          className="code"
          rows={3}
          value={text}
          spellCheck={false}
          onChange={(e) => {
            setText(e.target.value);
            if (!e.target.value.trim()) {
              setParseError(null);
              onChange(null);
              return;
            }
            try {
              const parsed: unknown = JSON.parse(e.target.value);
              if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
                setParseError("must be a JSON object");
                return;
              }
              setParseError(null);
              onChange(parsed as Record<string, unknown>);
            } catch (error) {
              setParseError(`not JSON: ${(error as Error).message}`);
            }
          }}
        />
      )}
    </Field>
  );
}
