// The UI with ACLs on (tests/integration/test_ui_acl_browser.py starts the agent): without a
// token lists are cut and say so, a wrong token is refused at the form, a read token shows the
// services, a write it lacks is refused in the page, and logging out forgets the token.
// usage: node ui/tests/ui_acl_check.mjs http://127.0.0.1:PORT SCREENSHOT_DIR WRONG_TOKEN READ_TOKEN
import { chromium } from "playwright-core";

const [base, shots, wrong, reader] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--no-first-run"],
});
const out = { errors: [], screenshots: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  // Chromium logs every 4xx fetch; the refusals (401/403) are what this test provokes, and an
  // empty KV listing is Consul's 404 (the page shows an empty list).
  const refusal = (m) => /status of 40[13]/.test(m.text())
    || (m.text().includes("status of 404") && (m.location().url || "").includes("/v1/kv/?keys"));
  page.on("console", (m) => {
    if (m.type() === "error" && !refusal(m)) out.errors.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => out.errors.push(`${page.url()}: ${e.message}`));
  const shot = async (name) => {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    out.screenshots.push(path);
  };
  const rows = () => page.$$eval("main tbody tr td:first-child", (tds) => tds.map((t) => t.textContent));

  await page.goto(`${base}/ui/#/services`);
  await page.waitForSelector("nav a.who");
  out.anonymousNav = await page.textContent("nav a.who");
  await page.waitForSelector("p.filtered");
  await page.waitForLoadState("networkidle");
  out.anonymousServices = await rows();
  await shot("acl-anonymous");

  await page.click("nav a.who");
  await page.waitForSelector("form.token");
  await page.fill("form.token input[name=token]", wrong);
  await page.click("form.token button");
  out.wrongToken = await (await page.waitForSelector("main p.error")).textContent();
  out.storedAfterWrong = await page.evaluate(() => localStorage.getItem("meshd-token"));
  await shot("acl-wrong-token");

  await page.fill("form.token input[name=token]", reader);
  await page.click("form.token button");
  await page.waitForSelector("nav span.who");
  out.readerNav = await page.textContent("nav span.who");
  await page.waitForSelector("main tbody tr");
  await page.waitForLoadState("networkidle");
  out.readerServices = await rows();
  await shot("acl-reader");

  await page.goto(`${base}/ui/#/kv`);
  await page.waitForSelector("form.kv");
  await page.fill("form.kv input[name=key]", "ui-acl/denied");
  await page.fill("form.kv textarea[name=value]", "should not land");
  await page.click("form.kv button");
  out.kvWrite = await (await page.waitForSelector("main p.note")).textContent();
  await shot("acl-kv-denied");

  await page.click("nav span.who a");
  await page.waitForSelector("nav a.who");
  out.storedAfterLogout = await page.evaluate(() => localStorage.getItem("meshd-token"));
} catch (e) {
  out.failure = String(e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
