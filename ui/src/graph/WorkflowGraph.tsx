// A workflow as a graph: steps as nodes, transitions as edges labelled with
// their conditions, laid out top to bottom by dagre. A fan-out step is drawn
// as a stack with its `for_each`, and its outgoing edges as the join; with
// `statuses`, each node is coloured by the live status of its step.
import dagre from "@dagrejs/dagre";
import { Background, Controls, MarkerType, ReactFlow, type Edge, type Node } from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import { useMemo } from "react";

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
  const { nodes, edges } = useMemo(() => layout(steps, statuses), [steps, statuses]);
  // a new shape is drawn afresh, so that it is fitted into view again
  const shape = `${nodes.map((n) => n.id).join(",")}|${edges.map((e) => e.id).join(",")}`;
  return (
    <figure className="graph" aria-label={label} data-testid="graph">
      <ReactFlow
        key={shape}
        nodes={nodes}
        edges={edges}
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
