// One process as a table row of the job page (a step, or a fan-out's item),
// and how a row read over REST takes the newer state the websocket holds.
import type { ProcessOut } from "../api/client";
import type { Row } from "../api/live";
import { Json, Status, when } from "../components/ui";

/**
 * `process` as read over REST, updated by the websocket's row of the same id
 * when that is newer. The websocket's rows carry no input nor children (they
 * never change), so those stay as read.
 */
export function withLive(process: ProcessOut, live: Map<string, Row>): ProcessOut {
  const held = live.get(process.id);
  if (!held || held.version <= process.version) return process;
  return { ...process, ...(held as Partial<ProcessOut>) };
}

function Collapsed({ what, value, of }: { what: string; value: unknown; of: string }) {
  return (
    <details>
      <summary>{what}</summary>
      <Json value={value} label={`${what} of ${of}`} />
    </details>
  );
}

type Props = {
  process: ProcessOut;
  /** A fan-out's item: its index stands for the step and function. */
  item?: boolean;
};

export function ProcessRow({ process: p, item = false }: Props) {
  const name = item ? `${p.step} [${String(p.item_index)}]` : p.step;
  return (
    <tr data-step={p.step} data-item={item ? String(p.item_index) : undefined}>
      {item ? (
        <td>
          {String(p.item_index)}
          {p.reused_from ? " (reused)" : ""}
        </td>
      ) : (
        <>
          <td>
            {p.step}
            {p.item_index != null ? ` [${String(p.item_index)}]` : ""}
            {p.reused_from ? " (reused)" : ""}
          </td>
          <td>{p.function}</td>
        </>
      )}
      <td>
        <Status status={p.status} />
        {p.waiting ? <div className="muted">{p.waiting}</div> : null}
      </td>
      <td>{p.attempt}</td>
      <td>{when(p.started_at)}</td>
      <td>{when(p.finished_at)}</td>
      <td>{"input" in p ? <Collapsed what="input" value={p.input} of={name} /> : null}</td>
      <td>
        {p.error ? <span className="error-text">{p.error}</span> : null}
        {p.output != null ? <Collapsed what="output" value={p.output} of={name} /> : null}
      </td>
    </tr>
  );
}
