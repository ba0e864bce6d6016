// A step's config as a form generated from its function's input JSON Schema:
// text for strings, numbers for numbers, a box for booleans, JSON otherwise.
import { Field, JsonField, type FieldErrors } from "./fields";

type Schema = {
  properties?: Record<string, { type?: string | string[]; title?: string; description?: string; $ref?: string }>;
  required?: string[];
};

function typeOf(prop: { type?: string | string[] }): string {
  const t = Array.isArray(prop.type) ? prop.type.find((x) => x !== "null") : prop.type;
  return t ?? "json";
}

export function SchemaForm({
  schema,
  path,
  value,
  onChange,
  errors,
}: {
  schema: Record<string, unknown> | undefined;
  path: string;
  value: Record<string, unknown>;
  onChange: (value: Record<string, unknown>) => void;
  errors: FieldErrors;
}) {
  const properties = (schema as Schema | undefined)?.properties ?? {};
  const required = new Set((schema as Schema | undefined)?.required ?? []);
  const names = Object.keys(properties);
  if (names.length === 0) {
    return <p className="muted">This function's input has no declared fields.</p>;
  }
  const set = (key: string, v: unknown) => {
    const next = { ...value };
    if (v === undefined || v === "") delete next[key];
    else next[key] = v;
    onChange(next);
  };
  return (
    <fieldset className="schema-form">
      <legend>Config (from the function's input schema)</legend>
      {names.map((key) => {
        const prop = properties[key]!;
        const kind = typeOf(prop);
        const fieldPath = `${path}.${key}`;
        const label = `${prop.title ?? key}${required.has(key) ? " (required)" : ""}`;
        if (kind === "string" || kind === "integer" || kind === "number") {
          const numeric = kind !== "string";
          return (
            <Field key={key} path={fieldPath} label={label} errors={errors} hint={prop.description}>
              {(props) => (
                <input
                  {...props}
                  type={numeric ? "number" : "text"}
                  step={kind === "integer" ? 1 : "any"}
                  value={value[key] == null ? "" : String(value[key])}
                  onChange={(e) =>
                    set(key, numeric && e.target.value !== "" ? Number(e.target.value) : e.target.value)
                  }
                />
              )}
            </Field>
          );
        }
        if (kind === "boolean") {
          return (
            <Field key={key} path={fieldPath} label={label} errors={errors}>
              {(props) => (
                <input
                  {...props}
                  type="checkbox"
                  checked={value[key] === true}
                  onChange={(e) => set(key, e.target.checked)}
                />
              )}
            </Field>
          );
        }
        return (
          <JsonField
            key={key}
            path={fieldPath}
            label={`${label} (JSON)`}
            value={value[key]}
            onChange={(v) => set(key, v ?? undefined)}
            errors={errors}
          />
        );
      })}
    </fieldset>
  );
}
