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

export async function call(method, path, body) {
  const headers = {};
  if (token()) headers["X-Consul-Token"] = token();
  const init = { method, headers };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  if (!resp.ok) throw new APIError(resp.status, text.trim());
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") && text ? JSON.parse(text) : text;
}

export const get = (path) => call("GET", path);
export const put = (path, body) => call("PUT", path, body);
export const del = (path) => call("DELETE", path);
