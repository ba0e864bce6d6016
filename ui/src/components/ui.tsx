// Small shared pieces: loading and empty states, problem details, status badges.
import type { ReactNode } from "react";
import { ApiError } from "../api/client";

export function Loading({ what }: { what: string }) {
  return (
    <p className="muted" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty">{children}</p>;
}

/** An API error as the user should read it: the problem's detail and each named field. */
export function ErrorMessage({ error }: { error: unknown }) {
  if (!error) return null;
  if (error instanceof ApiError) {
    const { problem } = error;
    return (
      <div className="alert" role="alert">
        <strong>{problem.title}</strong>: {problem.detail}
        {problem.errors && problem.errors.length > 1 ? (
          <ul>
            {problem.errors.map((e) => (
              <li key={`${e.field}:${e.message}`}>
                <code>{e.field}</code>: {e.message}
              </li>
            ))}
          </ul>
        ) : null}
        {problem.reference ? <div>Reference: {problem.reference}</div> : null}
      </div>
    );
  }
  return (
    <div className="alert" role="alert">
      {error instanceof Error ? error.message : String(error)}
    </div>
  );
}

const SYMBOLS: Record<string, string> = {
  queued: "·",
  running: "▶",
  succeeded: "✔",
  failed: "✘",
  cancelled: "⊘",
};

export function Status({ status }: { status: string }) {
  return (
    <span className={`status status-${status}`} data-status={status}>
      <span aria-hidden="true">{SYMBOLS[status] ?? "?"}</span> {status}
    </span>
  );
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

export function when(iso: unknown): string {
  if (typeof iso !== "string" || !iso) return "";
  return new Date(iso).toLocaleString();
}

export function Json({ value, label }: { value: unknown; label: string }) {
  return (
    <pre className="json" aria-label={label} tabIndex={0}>
      {JSON.stringify(value, null, 2)}
    </pre>
  );
}
