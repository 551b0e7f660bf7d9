// The live graph: colour by success rate, thickness by request rate, denied edges dashed red.
import cytoscape from "cytoscape";

export function edgeColour(e) {
  if (e.Denied) return "#c62828";
  const sr = e.Metrics.SuccessRate;
  if (sr === null) return "#607d8b"; // TCP, or no requests yet
  if (sr >= 0.99) return "#2e7d32";
  if (sr >= 0.9) return "#f9a825";
  return "#c62828";
}

export function edgeWidth(e) {
  const rate = e.Metrics.RequestsPerSecond || e.Metrics.ConnectionsPerSecond;
  return Math.min(2 + Math.log2(1 + rate) * 2, 14);
}

function elements(graph) {
  const nodes = graph.Services.map((s) => ({ data: { id: s.Name, label: s.Name } }));
  const edges = graph.Edges.map((e) => ({
    data: {
      id: `${e.Source}->${e.Destination}`,
      source: e.Source,
      target: e.Destination,
      colour: edgeColour(e),
      width: edgeWidth(e),
      style: e.Denied ? "dashed" : "solid",
      label: e.Denied ? "denied" : label(e),
    },
  }));
  return [...nodes, ...edges];
}

export function label(e) {
  const m = e.Metrics;
  if (e.Protocol === "tcp") return `${m.ConnectionsPerSecond.toFixed(1)} conn/s`;
  const sr = m.SuccessRate === null ? "-" : `${(m.SuccessRate * 100).toFixed(1)}%`;
  return `${m.RequestsPerSecond.toFixed(1)} rps ${sr}`;
}

export function drawGraph(container, graph, previous) {
  const els = elements(graph);
  const ids = els.map((x) => x.data.id).sort().join(",");
  if (previous && previous.ids === ids) {
    // same shape: update styles in place, keep the layout the user sees
    for (const el of els) previous.cy.getElementById(el.data.id).data(el.data);
    return previous;
  }
  if (previous) previous.cy.destroy();
  const cy = cytoscape({
    container,
    elements: els,
    style: [
      {
        selector: "node",
        style: { label: "data(label)", "background-color": "#1565c0", color: "#111", "font-size": 12 },
      },
      {
        selector: "edge",
        style: {
          width: "data(width)",
          "line-color": "data(colour)",
          "line-style": "data(style)",
          "target-arrow-color": "data(colour)",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          label: "data(label)",
          "font-size": 10,
        },
      },
    ],
    layout: { name: "breadthfirst", directed: true, padding: 20 },
  });
  return { cy, ids };
}
