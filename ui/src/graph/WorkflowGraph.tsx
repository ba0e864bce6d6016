// A workflow as a graph: steps as nodes, transitions as edges labelled with
// their conditions, laid out top to bottom by dagre. A fan-out step is drawn
// as a stack with its `for_each`, and its outgoing edges as the join; with
// `statuses`, each node is coloured by the live status of its step.
//
// React Flow hides a node until the browser reports its size, and draws an
// edge only between measured nodes. The browser reports sizes when it renders
// a frame, which a busy or background tab may not do for a second or more.
// So each node states the size it was laid out with, and is drawn at once;
// and since every edit of the draft and every live status makes new node
// objects, which carry no measurement, each node's measured size is kept here
// and handed back with it: neither nodes nor edges flicker or wait on the
// browser after an update.
import dagre from "@dagrejs/dagre";
import {
  Background,
  Controls,
  MarkerType,
  ReactFlow,
  type Edge,
  type Node,
  type NodeChange,
} from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import { useCallback, useMemo, useState } from "react";

type Size = { width: number; height: number };

export type GraphStep = {
  name: string;
  function: string;
  for_each?: string | null;
  next?: { to: string; when?: string | null }[] | null;
};

const WIDTH = 190;
const HEIGHT = 64;

function layout(steps: GraphStep[], statuses: Record<string, string>) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "TB", nodesep: 40, ranksep: 70 });
  g.setDefaultEdgeLabel(() => ({}));
  const names = new Set(steps.map((s) => s.name));
  for (const step of steps) g.setNode(step.name, { width: WIDTH, height: HEIGHT });
  const edges: Edge[] = [];
  for (const step of steps) {
    (step.next ?? []).forEach((t, i) => {
      if (!names.has(t.to)) return;
      g.setEdge(step.name, t.to);
      const label = [step.for_each ? "join" : "", t.when ?? (i > 0 ? "otherwise" : "")]
        .filter(Boolean)
        .join(": ");
      edges.push({
        id: `${step.name}-${i}-${t.to}`,
        source: step.name,
        target: t.to,
        label: label || undefined,
        markerEnd: { type: MarkerType.ArrowClosed },
        className: step.for_each ? "edge-join" : undefined,
      });
    });
  }
  dagre.layout(g);
  const nodes: Node[] = steps.map((step, index) => {
    const { x, y } = g.node(step.name);
    const status = statuses[step.name];
    return {
      id: step.name,
      position: { x: x - WIDTH / 2, y: y - HEIGHT / 2 },
      data: {
        label: (
          <div>
            <strong>{step.name}</strong>
            <div className="node-fn">
              {step.function}
              {step.for_each ? ` · for each ${step.for_each}` : ""}
            </div>
            {status ? <div className="node-status">{status}</div> : null}
          </div>
        ),
      },
      className: [
        "step-node",
        step.for_each ? "fanout" : "",
        status ? `node-${status}` : "",
        index === 0 ? "start" : "",
      ].join(" "),
      draggable: false,
      connectable: false,
      style: { width: WIDTH },
      initialWidth: WIDTH,
      initialHeight: HEIGHT,
      ariaLabel: `step ${step.name}${status ? `, ${status}` : ""}`,
    };
  });
  return { nodes, edges };
}

export function WorkflowGraph({
  steps,
  statuses = {},
  label,
}: {
  steps: GraphStep[];
  statuses?: Record<string, string>;
  label: string;
}) {
  const laidOut = useMemo(() => layout(steps, statuses), [steps, statuses]);
  const [sizes, setSizes] = useState<Record<string, Size>>({});
  const nodes = useMemo(
    () => laidOut.nodes.map((n) => (sizes[n.id] ? { ...n, measured: sizes[n.id] } : n)),
    [laidOut, sizes],
  );
  const { edges } = laidOut;
  const keepSizes = useCallback((changes: NodeChange[]) => {
    const measured: Record<string, Size> = {};
    for (const change of changes) {
      if (change.type === "dimensions" && change.dimensions) measured[change.id] = change.dimensions;
    }
    if (Object.keys(measured).length > 0) setSizes((known) => ({ ...known, ...measured }));
  }, []);
  // a new shape is drawn afresh, so that it is fitted into view again
  const shape = `${nodes.map((n) => n.id).join(",")}|${edges.map((e) => e.id).join(",")}`;
  return (
    <figure className="graph" aria-label={label} data-testid="graph">
      <ReactFlow
        key={shape}
        nodes={nodes}
        edges={edges}
        onNodesChange={keepSizes}
        fitView
        nodesDraggable={false}
        nodesConnectable={false}
        elementsSelectable={false}
      >
        <Background />
        <Controls showInteractive={false} />
      </ReactFlow>
    </figure>
  );
}
