// The live grid's websocket (/ws): subscribe to topics, keep rows current.
// A snapshot replaces what a topic holds; an event updates the row with its
// id when its `version` is newer than the one held. On a closed socket the
// hook reconnects after a second and subscribes again (a fresh snapshot).
import { useEffect, useRef, useState } from "react";

export type Row = { id: string; version: number; [key: string]: unknown };

export type LiveState = {
  /** Rows by id: jobs for project/workflow topics, the job and processes for job topics. */
  jobs: Map<string, Row>;
  processes: Map<string, Row>;
  connected: boolean;
  snapshots: number;
  error: string | null;
};

function upsert(map: Map<string, Row>, row: Row): Map<string, Row> {
  const held = map.get(row.id);
  if (held && held.version >= row.version) return map;
  const next = new Map(map);
  next.set(row.id, { ...held, ...row });
  return next;
}

/** Follows `topics` (`job:<id>`, `workflow:<id>`, `project:<id>`); none while empty. */
export function useLive(topics: string[], limit = 100): LiveState {
  const [state, setState] = useState<LiveState>({
    jobs: new Map(),
    processes: new Map(),
    connected: false,
    snapshots: 0,
    error: null,
  });
  const key = topics.join(" ");
  const socketRef = useRef<WebSocket | null>(null);

  useEffect(() => {
    if (!key) return undefined;
    let stopped = false;
    let retry: number | undefined;
    const wanted = key.split(" ");
    const snapshotsOf = new Map<string, string[]>();
    setState((s) => ({ ...s, jobs: new Map(), processes: new Map(), snapshots: 0 }));

    const connect = () => {
      const scheme = window.location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${window.location.host}/ws`);
      socketRef.current = socket;
      socket.onopen = () => {
        setState((s) => ({ ...s, connected: true }));
        for (const topic of wanted) {
          const frame: Record<string, unknown> = { op: "subscribe", topic };
          if (!topic.startsWith("job:")) frame.limit = limit;
          socket.send(JSON.stringify(frame));
        }
      };
      socket.onmessage = (message) => {
        const frame = JSON.parse(String(message.data)) as Record<string, unknown>;
        if (frame.type === "ping") socket.send(JSON.stringify({ op: "ping" }));
        if (frame.type === "error") {
          setState((s) => ({ ...s, error: String(frame.message) }));
        }
        if (frame.type === "snapshot") {
          const topic = String(frame.topic);
          setState((s) => {
            const jobs = new Map(s.jobs);
            for (const id of snapshotsOf.get(topic) ?? []) jobs.delete(id);
            let processes = s.processes;
            const rows: Row[] = [];
            if (frame.job) {
              const { processes: procs, ...job } = frame.job as Row & { processes: Row[] };
              rows.push(job as Row);
              processes = new Map((procs ?? []).map((p) => [p.id, p]));
            }
            for (const job of (frame.jobs as Row[] | undefined) ?? []) rows.push(job);
            for (const row of rows) jobs.set(row.id, row);
            snapshotsOf.set(topic, rows.map((r) => r.id));
            return { ...s, jobs, processes, snapshots: s.snapshots + 1, error: null };
          });
        }
        if (frame.type === "event") {
          const data = frame.data as Row;
          setState((s) =>
            frame.event === "job.updated"
              ? { ...s, jobs: upsert(s.jobs, data) }
              : { ...s, processes: upsert(s.processes, data) },
          );
        }
      };
      socket.onclose = () => {
        setState((s) => ({ ...s, connected: false }));
        if (!stopped) retry = window.setTimeout(connect, 1000);
      };
    };
    connect();
    return () => {
      stopped = true;
      window.clearTimeout(retry);
      socketRef.current?.close();
    };
  }, [key, limit]);

  return state;
}
