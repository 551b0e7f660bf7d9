// Drives the UI in headless Chromium against a running agent (tests/integration/test_ui_browser.py
// starts the agent, the sidecars and the traffic). Prints one JSON line: what it saw.
// usage: node ui/tests/ui_check.mjs http://127.0.0.1:PORT SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [base, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--no-first-run"],
});
const out = { errors: [], pages: {}, screenshots: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  // Chromium logs every 4xx fetch; Consul answers an empty KV listing with 404 and the UI shows
  // an empty list for it, so that one is not an error of the page.
  const kvEmpty = (m) => m.text().includes("status of 404") && (m.location().url || "").includes("/v1/kv/?keys");
  // With ACLs off the UI's token/self is Consul's 401 "ACL support disabled": how it knows.
  const aclOff = (m) => m.text().includes("status of 401") && (m.location().url || "").endsWith("/v1/acl/token/self");
  page.on("console", (m) => {
    if (m.type() === "error" && !kvEmpty(m) && !aclOff(m)) out.errors.push(`${page.url()}: ${m.text()} (${m.location().url})`);
  });
  page.on("pageerror", (e) => out.errors.push(`${page.url()}: ${e.message}`));
  const shot = async (name) => {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    out.screenshots.push(path);
  };
  const visit = async (hash, name) => {
    await page.goto(`${base}/ui/#/${hash}`);
    await page.waitForSelector("main h1");
    await page.waitForLoadState("networkidle");
    out.pages[name] = await page.textContent("main h1");
    await shot(name);
  };
  for (const [hash, name] of [["services", "services"], ["service/api", "service"], ["nodes", "nodes"],
    ["kv", "kv"], ["intentions", "intentions"], ["explain", "explain"]]) {
    await visit(hash, name);
  }
  // KV editor: a key written in the UI is listed
  await visit("kv", "kv");
  await page.fill("form.kv input[name=key]", "ui-test/hello");
  await page.fill("form.kv textarea[name=value]", "from the browser");
  await page.click("form.kv button");
  await page.waitForSelector("text=ui-test/hello");
  out.kvSaved = true;
  // topology: web -> api carries traffic
  await visit("topology", "topology");
  const live = await page.waitForSelector('tr[data-edge="web->api"]:not([data-rps="0"])', { timeout: 20000 });
  out.webApiRps = Number(await live.getAttribute("data-rps"));
  await shot("topology-live");
  // an intention created in the UI denies the edge
  await visit("intentions", "intentions");
  await page.fill("form.intention input[name=source]", "web");
  await page.fill("form.intention input[name=destination]", "api");
  await page.selectOption("form.intention select[name=action]", "deny");
  await page.click("form.intention button");
  await page.waitForSelector("text=saved web => api (deny)");
  await shot("intention-created");
  await visit("topology", "topology-denied");
  await page.waitForSelector('tr[data-edge="web->api"][data-denied="true"]', { timeout: 10000 });
  out.deniedInTopology = true;
  await shot("topology-denied");
  // the explainer says why
  await visit("explain", "explain");
  await page.fill("form.explain input[name=source]", "web");
  await page.fill("form.explain input[name=destination]", "api");
  await page.click("form.explain button");
  await page.waitForSelector("p.verdict");
  out.verdict = await page.textContent("p.verdict");
  await shot("explain-denied");
} catch (e) {
  out.failure = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
