// meshd's web UI: hash-routed pages over the agent's HTTP API (Preact + htm, no JSX step).
import { h, render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { APIError, call, del, get, put, setToken, token, newPage, wasFiltered, whoAmI } from "./api.js";
import { drawGraph, label } from "./topology.js";
import "./style.css";

const html = htm.bind(h);
const enc = encodeURIComponent;

function useRoute() {
  const [hash, setHash] = useState(location.hash || "#/services");
  useEffect(() => {
    const f = () => {
      newPage();
      setHash(location.hash || "#/services");
    };
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return hash.slice(2).split("/").map(decodeURIComponent);
}

// Loads `fn()` now and every `every` ms; a 403 asks for a token.
function useData(fn, deps, every = 0) {
  const [state, setState] = useState({ data: null, error: null });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    const load = () =>
      fn().then(
        (data) => live && setState({ data, error: null }),
        (error) => live && setState((s) => ({ data: s.data, error })),
      );
    load();
    const t = every ? setInterval(load, every) : null;
    return () => {
      live = false;
      if (t) clearInterval(t);
    };
  }, [...deps, tick]);
  return [state, () => setTick((x) => x + 1)];
}

function Problem({ error }) {
  if (!error) {
    return wasFiltered()
      ? html`<p class="note filtered">Some results are hidden by ACLs: <a href="#/login">log in</a> with a token that may read them.</p>`
      : null;
  }
  if (error instanceof APIError && error.status === 403) return html`<${TokenForm} />`;
  return html`<p class="error" role="alert">${String(error.message || error)}</p>`;
}

// The token is checked with the agent before it is kept: a wrong one is said at once, not on
// every page after.
function TokenForm() {
  const [t, setT] = useState(token());
  const [msg, setMsg] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try {
      await call("GET", "/v1/acl/token/self", undefined, t);
      setToken(t);
      location.hash = "#/services";
      location.reload();
    } catch (err) {
      setMsg(String(err.message || err));
    }
  };
  return html`<form class="token" onSubmit=${submit}>
    <p>ACLs are on: this page needs a token.</p>
    <input name="token" type="password" placeholder="ACL token" value=${t} onInput=${(e) => setT(e.target.value)} />
    <button>Use token</button>
  </form>${msg && html`<p class="error" role="alert">${msg}</p>`}`;
}

function Login() {
  return html`<h1>Log in</h1><${TokenForm} />`;
}

// The nav's right end: who the UI acts as, with a way in or out (only when ACLs are on).
function Who() {
  const [who, setWho] = useState(null);
  useEffect(() => {
    whoAmI().then(setWho);
  }, []);
  if (!who || !who.enabled) return null;
  if (!who.token) return html`<a class="who" href="#/login">Log in</a>`;
  const name = who.token.Description || who.token.AccessorID;
  const logout = (e) => {
    e.preventDefault();
    setToken("");
    location.hash = "#/services";
    location.reload();
  };
  return html`<span class="who">${name} <a href="#/services" onClick=${logout}>Log out</a></span>`;
}

function health(rows) {
  const checks = rows.flatMap((r) => r.Checks);
  if (checks.some((c) => c.Status === "critical")) return "critical";
  if (checks.some((c) => c.Status === "warning")) return "warning";
  return "passing";
}

async function loadServices() {
  const names = Object.keys(await get("/v1/catalog/services"));
  return Promise.all(
    names.map(async (name) => {
      const rows = await get(`/v1/health/service/${enc(name)}`);
      return { name, rows, status: health(rows), tags: [...new Set(rows.flatMap((r) => r.Service.Tags))] };
    }),
  );
}

function Services() {
  const [{ data, error }] = useData(loadServices, [], 5000);
  return html`<h1>Services</h1><${Problem} error=${error} />
    <table><thead><tr><th>Service</th><th>Health</th><th>Instances</th><th>Tags</th><th>Sidecar</th></tr></thead>
    <tbody>${(data || []).map((s) => html`<tr>
      <td><a href=${`#/service/${enc(s.name)}`}>${s.name}</a></td>
      <td class=${s.status}>${s.status}</td><td>${s.rows.length}</td><td>${s.tags.join(", ")}</td>
      <td>${s.rows.some((r) => r.Service.Kind === "connect-proxy") ? "is a sidecar" :
        s.rows.some((r) => r.Service.Connect) ? "yes" : ""}</td></tr>`)}</tbody></table>`;
}

function Golden({ m }) {
  if (!m) return html`<span>no traffic</span>`;
  const sr = m.SuccessRate === null ? "-" : `${(m.SuccessRate * 100).toFixed(1)}%`;
  const ms = (x) => (x === null ? "-" : `${x.toFixed(1)} ms`);
  return html`<span class="golden">${m.RequestsPerSecond.toFixed(2)} rps · success ${sr} · p50 ${ms(m.P50Ms)} · p99 ${ms(m.P99Ms)} · ${m.DeniedPerSecond.toFixed(2)} denied/s</span>`;
}

function Service({ name }) {
  const [{ data, error }] = useData(
    async () => ({
      rows: await get(`/v1/health/service/${enc(name)}`),
      topo: await get(`/v1/internal/ui/service-topology/${enc(name)}?kind=`),
      graph: await get("/v1/meshd/graph?window=30s"),
    }),
    [name],
    3000,
  );
  const inbound = data && data.graph.Services.find((s) => s.Name === name);
  const peer = (list, title) => html`<h2>${title}</h2><ul class="peers">${list.map((u) => html`<li>
      <a href=${`#/service/${enc(u.Name)}`}>${u.Name}</a> ${u.Intention.Allowed ? "" : html`<b class="critical">denied</b>`}
      <${Golden} m=${u.Metrics} /></li>`)}</ul>`;
  return html`<h1>${name}</h1><${Problem} error=${error} />
    ${data && html`<p>Inbound: <${Golden} m=${inbound && inbound.Inbound} /></p>
      <h2>Instances</h2>
      ${data.rows.map((r) => html`<div class="instance"><b>${r.Service.ID}</b> on ${r.Node.Node} at
        ${r.Service.Address || r.Node.Address}:${r.Service.Port}
        <ul>${r.Checks.map((c) => html`<li class=${c.Status}>${c.Name}: ${c.Status}<pre>${c.Output}</pre></li>`)}</ul></div>`)}
      ${peer(data.topo.Upstreams, "Upstreams")}${peer(data.topo.Downstreams, "Downstreams")}`}`;
}

function Nodes() {
  const [{ data, error }] = useData(() => get("/v1/catalog/nodes"), [], 5000);
  return html`<h1>Nodes</h1><${Problem} error=${error} />
    <table><thead><tr><th>Node</th><th>Address</th><th>Datacenter</th></tr></thead>
    <tbody>${(data || []).map((n) => html`<tr><td>${n.Node}</td><td>${n.Address}</td><td>${n.Datacenter}</td></tr>`)}</tbody></table>`;
}

function KV() {
  const [{ data, error }, reload] = useData(
    () => get("/v1/kv/?keys").catch((e) => (e.status === 404 ? [] : Promise.reject(e))),
    [],
  );
  const [key, setKey] = useState("");
  const [value, setValue] = useState("");
  const [msg, setMsg] = useState(null);
  const open = async (k) => {
    setKey(k);
    setValue(await get(`/v1/kv/${k.split("/").map(enc).join("/")}?raw`));
  };
  const save = async (e) => {
    e.preventDefault();
    try {
      await put(`/v1/kv/${key.split("/").map(enc).join("/")}`, value);
      setMsg(`saved ${key}`);
      reload();
    } catch (err) {
      setMsg(String(err.message));
    }
  };
  const remove = async () => {
    await del(`/v1/kv/${key.split("/").map(enc).join("/")}`);
    setMsg(`deleted ${key}`);
    setKey("");
    setValue("");
    reload();
  };
  return html`<h1>Key/Value</h1><${Problem} error=${error} />
    <ul class="keys">${(data || []).map((k) => html`<li><a href="#/kv" onClick=${(e) => { e.preventDefault(); open(k); }}>${k}</a></li>`)}</ul>
    <form class="kv" onSubmit=${save}>
      <input name="key" placeholder="key" value=${key} onInput=${(e) => setKey(e.target.value)} />
      <textarea name="value" placeholder="value" value=${value} onInput=${(e) => setValue(e.target.value)} />
      <button>Save</button> ${key && html`<button type="button" onClick=${remove}>Delete</button>`}
    </form>${msg && html`<p class="note">${msg}</p>`}`;
}

function Intentions() {
  const [{ data, error }, reload] = useData(() => get("/v1/connect/intentions"), []);
  const [form, setForm] = useState({ source: "", destination: "", action: "deny" });
  const [msg, setMsg] = useState(null);
  const pair = (s, d) => `/v1/connect/intentions/exact?source=${enc(s)}&destination=${enc(d)}`;
  const save = async (e) => {
    e.preventDefault();
    try {
      await put(pair(form.source, form.destination), { Action: form.action });
      setMsg(`saved ${form.source} => ${form.destination} (${form.action})`);
      reload();
    } catch (err) {
      setMsg(String(err.message));
    }
  };
  const remove = async (i) => {
    await del(pair(i.SourceName, i.DestinationName));
    reload();
  };
  const field = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  return html`<h1>Intentions</h1><${Problem} error=${error} />
    <p>In precedence order: the first that matches decides.</p>
    <table><thead><tr><th>Source</th><th>Destination</th><th>Action</th><th>Precedence</th><th></th></tr></thead>
    <tbody>${(data || []).map((i) => html`<tr>
      <td>${i.SourceName}</td><td>${i.DestinationName}</td>
      <td>${i.Permissions && i.Permissions.length ? `${i.Permissions.length} permissions` : i.Action}</td>
      <td>${i.Precedence}</td>
      <td><button onClick=${() => setForm({ source: i.SourceName, destination: i.DestinationName, action: i.Action || "allow" })}>Edit</button>
      <button onClick=${() => remove(i)}>Delete</button></td></tr>`)}</tbody></table>
    <form class="intention" onSubmit=${save}>
      <input name="source" placeholder="source" value=${form.source} onInput=${field("source")} />
      <input name="destination" placeholder="destination" value=${form.destination} onInput=${field("destination")} />
      <select name="action" value=${form.action} onChange=${field("action")}>
        <option value="allow">allow</option><option value="deny">deny</option></select>
      <button>Save intention</button></form>${msg && html`<p class="note">${msg}</p>`}`;
}

function Topology() {
  const box = useRef(null);
  const drawn = useRef(null);
  const [{ data, error }] = useData(() => get("/v1/meshd/graph?window=30s"), [], 2000);
  useEffect(() => {
    if (data && box.current) drawn.current = drawGraph(box.current, data, drawn.current);
  }, [data]);
  return html`<h1>Topology</h1><${Problem} error=${error} />
    <div class="graph" ref=${box}></div>
    <table class="edges"><thead><tr><th>Edge</th><th>Metrics</th><th>Intention</th></tr></thead>
    <tbody>${(data ? data.Edges : []).map((e) => html`<tr data-edge=${`${e.Source}->${e.Destination}`}
        data-rps=${e.Metrics.RequestsPerSecond} data-denied=${String(e.Denied)}>
      <td>${e.Source} → ${e.Destination}</td><td>${label(e)}</td>
      <td class=${e.Denied ? "critical" : "passing"}>${e.Denied ? "denied" : "allowed"}</td></tr>`)}</tbody></table>`;
}

function Explain() {
  const [q, setQ] = useState({ source: "", destination: "" });
  const [res, setRes] = useState(null);
  const [err, setErr] = useState(null);
  const go = async (e) => {
    e.preventDefault();
    try {
      setRes(await get(`/v1/meshd/explain?source=${enc(q.source)}&destination=${enc(q.destination)}`));
      setErr(null);
    } catch (x) {
      setErr(x);
    }
  };
  return html`<h1>Explain</h1>
    <form class="explain" onSubmit=${go}>
      <input name="source" placeholder="source" value=${q.source} onInput=${(e) => setQ({ ...q, source: e.target.value })} />
      <input name="destination" placeholder="destination" value=${q.destination} onInput=${(e) => setQ({ ...q, destination: e.target.value })} />
      <button>Explain</button></form><${Problem} error=${err} />
    ${res && html`<ol class="steps">${res.Steps.map((s) => html`<li class=${s.OK ? "passing" : "critical"}>
      <b>${s.OK ? "ok" : "FAIL"}</b> ${s.Step}: ${s.Detail}</li>`)}</ol>
      <p class="verdict">${res.Source} ${res.Allowed ? "can" : "cannot"} reach ${res.Destination}</p>`}`;
}

const PAGES = [
  ["services", "Services"],
  ["nodes", "Nodes"],
  ["kv", "Key/Value"],
  ["intentions", "Intentions"],
  ["topology", "Topology"],
  ["explain", "Explain"],
];

function App() {
  const [page, arg] = useRoute();
  const body = {
    services: () => html`<${Services} />`,
    service: () => html`<${Service} name=${arg} />`,
    nodes: () => html`<${Nodes} />`,
    kv: () => html`<${KV} />`,
    intentions: () => html`<${Intentions} />`,
    topology: () => html`<${Topology} />`,
    explain: () => html`<${Explain} />`,
    login: () => html`<${Login} />`,
  }[page];
  return html`<nav><b>meshd</b>${PAGES.map(([p, t]) => html`<a class=${p === page ? "on" : ""} href=${`#/${p}`}>${t}</a>`)}<${Who} /></nav>
    <main>${body ? body() : html`<p>No such page.</p>`}</main>`;
}

render(html`<${App} />`, document.getElementById("app"));
export { call };
