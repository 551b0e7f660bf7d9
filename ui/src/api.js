// The HTTP API as the UI uses it: the ACL token (if any) rides on every request.
const TOKEN_KEY = "meshd-token";

export class APIError extends Error {
  constructor(status, text) {
    super(`${status}: ${text}`);
    this.status = status;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) localStorage.setItem(TOKEN_KEY, t);
  else localStorage.removeItem(TOKEN_KEY);
}

// Whether a list read for the page shown was cut by ACLs (Consul's X-Consul-Results-Filtered-By-ACLs):
// an empty page then says that a token would show more, instead of looking like an empty mesh.
let filtered = false;
export const wasFiltered = () => filtered;
export const newPage = () => {
  filtered = false;
};

// The anonymous token: what token/self shows a request without a token (as Consul).
const ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002";

// Who the UI acts as: {enabled: false} when the agent has ACLs off (Consul answers token/self
// with 401 "ACL support disabled"), else {enabled: true, token: the token's JSON, or null when
// no token is in use (none stored, or the anonymous token: the UI offers to log in)}.
export async function whoAmI() {
  try {
    const self = await get("/v1/acl/token/self");
    return { enabled: true, token: self && self.AccessorID !== ANONYMOUS_ACCESSOR ? self : null };
  } catch (err) {
    if (err instanceof APIError && err.status === 403) return { enabled: true, token: null };
    return { enabled: false, token: null };
  }
}

export async function call(method, path, body, asToken = token()) {
  const headers = {};
  if (asToken) headers["X-Consul-Token"] = asToken;
  const init = { method, headers };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  if (!resp.ok) throw new APIError(resp.status, text.trim());
  if (resp.headers.get("X-Consul-Results-Filtered-By-ACLs") === "true") filtered = true;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") && text ? JSON.parse(text) : text;
}

export const get = (path) => call("GET", path);
export const put = (path, body) => call("PUT", path, body);
export const del = (path) => call("DELETE", path);
