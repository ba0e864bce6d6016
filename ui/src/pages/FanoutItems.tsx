// A fan-out's items on the job page: a table of its children in item order,
// a page of ITEMS at a time from /jobs/{id}/processes/{pid}/children (the
// first page comes with the job), each row's status kept current by the
// job's websocket events.
import { useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { api, unwrap, type ProcessOut } from "../api/client";
import type { Row } from "../api/live";
import { ErrorMessage, Loading } from "../components/ui";
import { ProcessRow, withLive } from "./ProcessRow";

/** Children per page: the gateway's first page that comes with the job is as long. */
export const ITEMS = 50;

type Props = {
  jobId: string;
  parent: ProcessOut;
  /** The job's processes as the websocket keeps them, by id. */
  live: Map<string, Row>;
  /** Which run of the step this is, when the job ran it more than once. */
  label: string;
};

export function FanoutItems({ jobId, parent, live, label }: Props) {
  // The `after` of each page shown so far: the first page has none.
  const [afters, setAfters] = useState<number[]>([]);
  const after = afters.length ? afters[afters.length - 1] : undefined;
  const first = after === undefined ? parent.children : undefined;
  const page = useQuery({
    queryKey: ["children", jobId, parent.id, after ?? null],
    enabled: !first,
    queryFn: async () =>
      unwrap(
        await api.GET("/jobs/{job_id}/processes/{process_id}/children", {
          params: { path: { job_id: jobId, process_id: parent.id }, query: { after, limit: ITEMS } },
        }),
      ),
  });
  const shown = first ?? page.data;
  const headingId = `items-${parent.id}`;
  const start = afters.length * ITEMS + 1;
  const range = shown?.items.length
    ? `Items ${start}–${start + shown.items.length - 1} of ${shown.total}`
    : `${shown?.total ?? 0} items`;
  const next = shown?.next;
  return (
    <section aria-labelledby={headingId} data-testid={`items-${parent.step}`}>
      <h3 id={headingId}>Items of {label}</h3>
      <div className="toolbar">
        <span role="status" data-testid="items-range">
          {range}
        </span>
        <button
          type="button"
          onClick={() => setAfters((a) => a.slice(0, -1))}
          disabled={!afters.length}
        >
          Previous items
        </button>
        <button
          type="button"
          onClick={() => next != null && setAfters((a) => [...a, next])}
          disabled={next == null}
        >
          Next items
        </button>
      </div>
      <ErrorMessage error={page.error} />
      {shown ? (
        <table>
          <caption className="visually-hidden">
            {range} of {label}
          </caption>
          <thead>
            <tr>
              <th scope="col">Item</th>
              <th scope="col">Status</th>
              <th scope="col">Attempt</th>
              <th scope="col">Started</th>
              <th scope="col">Finished</th>
              <th scope="col">Input</th>
              <th scope="col">Output or error</th>
            </tr>
          </thead>
          <tbody>
            {shown.items.map((child) => (
              <ProcessRow key={child.id} process={withLive(child, live)} item />
            ))}
          </tbody>
        </table>
      ) : (
        <Loading what="the items" />
      )}
    </section>
  );
}
