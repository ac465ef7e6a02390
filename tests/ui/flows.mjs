// The console's flows in headless Chromium (Debian's), driven by playwright-core.
// Run by tests/it/ui.rs::browser_flows, which starts Keyward and the mock provider and sets
// KW_BASE, KW_PASSWORD, KW_PROVIDER (a provider's name) and KW_SHOTS (screenshot dir).
// Each flow prints "ok <flow>" and saves <flow>.png; any failure exits non-zero.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.KW_BASE;
const PASSWORD = process.env.KW_PASSWORD;
const PROVIDER = process.env.KW_PROVIDER;
const SHOTS = process.env.KW_SHOTS;
for (const [k, v] of Object.entries({ KW_BASE: BASE, KW_PASSWORD: PASSWORD, KW_PROVIDER: PROVIDER, KW_SHOTS: SHOTS })) {
  if (!v) { console.error(`${k} is not set`); process.exit(2); }
}

const profile = mkdtempSync(join(tmpdir(), "kw-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1440, height: 900 },
  timeout: 120_000,
});
context.setDefaultTimeout(30_000);
const page = context.pages()[0] ?? (await context.newPage());
const problems = [];
// Refusals the flows ask for (401, 403, 404 pages) are expected; anything else is not.
const expectedFailures = new Set();
page.on("response", (r) => {
  if (r.status() >= 400 && !expectedFailures.has(new URL(r.url()).pathname)) problems.push(`${r.status()} ${r.url()}`);
});
page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text()); });
page.on("pageerror", (e) => problems.push(String(e)));
// Nothing may be fetched from outside this origin.
page.on("request", (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith("data:")) problems.push(`external request ${r.url()}`); });

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function flow(name, fn) {
  const started = Date.now();
  try {
    await fn();
    await shot(name);
    assert.deepEqual(problems, [], "the page logged errors");
    console.log(`ok ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    await shot(`${name}-FAILED`).catch(() => {});
    console.error(`FAILED ${name}: ${e.stack || e}`);
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    process.exit(1);
  }
}

async function chat(secret) {
  const res = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] }),
  });
  return { status: res.status, body: await res.json() };
}

async function signIn(username) {
  await page.goto(`${BASE}/ui/login`);
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForLoadState("domcontentloaded");
}

async function signOut() {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${BASE}/ui/login`);
}

const row = (id) => page.locator(`tr[data-key-id="${id}"]`);

/** Creates a key through the dialog; returns its id and the secret shown once. */
async function createKey(name, { owner, models, rate, ips, preset } = {}) {
  await page.getByRole("button", { name: "Create API Key" }).click();
  const dialog = page.locator("#create-dialog");
  await dialog.waitFor({ state: "visible" });
  await dialog.getByLabel("Name").fill(name);
  if (owner) await dialog.getByLabel("User").selectOption({ label: owner });
  await dialog.getByLabel("Provider").selectOption({ label: PROVIDER });
  await dialog.getByLabel("Expiry").selectOption({ label: preset ?? "Production — 90 days" });
  await dialog.getByLabel("Scopes").selectOption("chat");
  if (models) await dialog.getByLabel("Models").fill(models);
  if (rate) await dialog.getByLabel("Rate limit (requests per minute)").fill(String(rate));
  if (ips) await dialog.getByLabel("IP allowlist").fill(ips);
  await dialog.getByRole("button", { name: "Create key" }).click();
  const secretDialog = page.locator("#secret-dialog");
  await secretDialog.waitFor({ state: "visible" });
  const secret = await page.inputValue("#secret-value");
  assert.match(secret, /^kw_[0-9A-Za-z]{49}$/);
  const id = await page.locator("tr", { has: page.getByRole("link", { name, exact: true }) }).last().getAttribute("data-key-id");
  return { id, secret };
}

let first; // billing-service: created, used, expired, deleted
let second; // payments-api: rotated
let rotated; // its successor
let asOf; // a moment after billing-service expired and before it was deleted

await flow("01-sign-in", async () => {
  await page.goto(`${BASE}/ui/keys`);
  assert.equal(new URL(page.url()).pathname, "/ui/login", "signed out, the console asks to sign in");
  await page.getByLabel("Username").fill("admin");
  expectedFailures.add("/ui/login");
  await page.getByLabel("Password").fill("not the password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "The username or password is not correct." }).waitFor();
  expectedFailures.delete("/ui/login");
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${BASE}/ui/admin/keys`);
  await page.getByRole("heading", { name: "API Keys", level: 1 }).waitFor();
  const cookies = await context.cookies(`${BASE}/ui/keys`);
  const session = cookies.find((c) => c.name === "kw_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie.includes("kw_session")), false, "scripts cannot read it");
});

await flow("02-create-key", async () => {
  // The dialog is keyboard-usable: focus moves in, Escape closes it.
  await page.getByRole("button", { name: "Create API Key" }).click();
  await page.locator("#create-dialog").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => document.activeElement?.closest("dialog")?.id), "create-dialog");
  await page.keyboard.press("Escape");
  await page.locator("#create-dialog").waitFor({ state: "hidden" });

  // An error comes back next to its field, with the values kept.
  expectedFailures.add("/ui/keys");
  await page.getByRole("button", { name: "Create API Key" }).click();
  await page.locator("#create-dialog").getByLabel("Name").fill("billing-service");
  await page.locator("#create-dialog").getByLabel("IP allowlist").fill("not-an-address");
  await page.locator("#create-dialog").getByRole("button", { name: "Create key" }).click();
  await page.locator("#err-ip_allowlist").waitFor({ state: "visible" });
  assert.equal(await page.locator("#c-ips").getAttribute("aria-invalid"), "true");
  expectedFailures.delete("/ui/keys");
  await page.keyboard.press("Escape");

  first = await createKey("billing-service", { owner: "admin", models: "gpt-4o-mini", rate: 600, ips: "127.0.0.1" });
  await page.getByText("It will not be shown again").waitFor();
  await page.locator("#secret-dialog").getByRole("button", { name: "Copy" }).click();
  await page.getByText("Copied to the clipboard.").waitFor();
  await shot("02-create-key-secret");
  await page.locator("#secret-dialog").getByRole("button", { name: "Done" }).click();
  await page.goto(`${BASE}/ui/admin/keys`);
  assert.equal((await page.content()).includes(first.secret), false, "the secret is shown once");
  const r = row(first.id);
  await r.getByText("Active").waitFor();
  assert.match(await r.innerText(), new RegExp(PROVIDER));
  assert.match(await r.innerText(), /chat/);
});

await flow("03-proxy", async () => {
  const res = await chat(first.secret);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.ok(res.body.choices?.length, "a chat completion");
  // The request count and last use show up (the usage event is committed asynchronously).
  for (let i = 0; ; i++) {
    await page.goto(`${BASE}/ui/admin/keys`);
    const cells = await row(first.id).locator("td").allInnerTexts();
    if (cells[5] === "1") break;
    assert.ok(i < 50, `the request count stayed ${cells[5]}`);
    await page.waitForTimeout(200);
  }
});

await flow("04-expire", async () => {
  await row(first.id).getByRole("button", { name: "Expire billing-service" }).click();
  const d = page.locator("#expire-dialog");
  await d.waitFor({ state: "visible" });
  await d.getByText("billing-service").waitFor();
  await d.getByRole("button", { name: "Expire key" }).click();
  await page.getByText("The key was expired. It stops working at once.").waitFor();
  await row(first.id).getByText("Expired").waitFor();
  const res = await chat(first.secret);
  assert.equal(res.status, 401);
  assert.equal(res.body.error.code, "key_expired");
});

await flow("05-rotate", async () => {
  second = await createKey("payments-api", { owner: "admin", preset: "Development — 30 days" });
  await page.locator("#secret-dialog").getByRole("button", { name: "Done" }).click();
  await page.goto(`${BASE}/ui/admin/keys`);
  for (let i = 0; i < 3; i++) assert.equal((await chat(second.secret)).status, 200);
  await row(second.id).getByRole("button", { name: "Rotate payments-api" }).click();
  const d = page.locator("#rotate-dialog");
  await d.waitFor({ state: "visible" });
  await d.getByLabel("Grace period").selectOption("1h");
  await d.getByRole("button", { name: "Rotate key" }).click();
  await page.locator("#secret-dialog").waitFor({ state: "visible" });
  const newSecret = await page.inputValue("#secret-value");
  assert.notEqual(newSecret, second.secret);
  await page.getByText("It will not be shown again").waitFor();
  await shot("05-rotate-secret");
  await page.locator("#secret-dialog").getByRole("button", { name: "Done" }).click();
  await row(second.id).getByText("Rotating").waitFor();
  rotated = await page.locator("tr", { has: page.getByRole("link", { name: "payments-api" }) }).last().getAttribute("data-key-id");
  assert.notEqual(rotated, second.id);
  assert.equal((await chat(newSecret)).status, 200, "the new key works");
  assert.equal((await chat(second.secret)).status, 200, "the old key works during its grace");
  // The key detail shows the grace use and the chart.
  // The use is committed asynchronously: reload until the page shows it.
  for (let i = 0; ; i++) {
    await page.goto(`${BASE}/ui/keys/${second.id}`);
    await page.getByRole("heading", { name: "Uses during the rotation grace" }).waitFor();
    if (await page.getByText("Someone has not switched over yet.").count()) break;
    assert.ok(i < 100, "the grace use never showed");
    await page.waitForTimeout(200);
  }
  await page.locator("svg title#chart-title").waitFor({ state: "attached" });
  await page.getByText("key.rotated").waitFor();
  await shot("10-key-detail");
});

await flow("06-delete", async () => {
  await page.waitForTimeout(1200);
  asOf = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().slice(0, 19);
  await page.waitForTimeout(1200);
  await page.goto(`${BASE}/ui/admin/keys`);
  await row(first.id).getByRole("button", { name: "Delete billing-service" }).click();
  const d = page.locator("#delete-dialog");
  await d.waitFor({ state: "visible" });
  await d.getByRole("button", { name: "Delete key" }).click();
  await page.getByText("The key was deleted.").waitFor();
  const cells = await row(first.id).locator("td").allInnerTexts();
  assert.equal(cells[8], "Deleted", "status column");
  assert.equal(cells[9], "Deleted", "Deleted column");
});

await flow("07-user-my-keys", async () => {
  await signOut();
  await signIn("alice");
  await page.waitForURL(`${BASE}/ui/keys`);
  await page.getByRole("heading", { name: "My API Keys" }).waitFor();
  await page.getByText("No API keys yet").waitFor();
  assert.equal(await page.getByLabel("User").count(), 0, "no User field for users");
  const mine = await createKey("alice-notebook", { preset: "Emergency — 7 days" });
  await page.locator("#secret-dialog").getByRole("button", { name: "Done" }).click();
  const ids = await page.locator("tr[data-key-id]").evaluateAll((rows) => rows.map((r) => r.dataset.keyId));
  assert.deepEqual(ids, [mine.id], "only alice's key");
  assert.equal(await page.getByRole("link", { name: "Providers" }).count(), 0, "no admin navigation");
  expectedFailures.add("/ui/admin/keys");
  expectedFailures.add(`/ui/keys/${second.id}`);
  const res = await page.goto(`${BASE}/ui/admin/keys`);
  assert.equal(res.status(), 403);
  await page.getByText("this page needs the admin role").waitFor();
  const other = await page.goto(`${BASE}/ui/keys/${second.id}`);
  assert.equal(other.status(), 404, "another user's key does not exist for her");
  expectedFailures.clear();
  await page.goto(`${BASE}/ui/keys`);
});

await flow("08-provider-delete-warning", async () => {
  await signOut();
  await signIn("admin");
  await page.goto(`${BASE}/ui/providers`);
  const card = page.locator("section.provider", { has: page.getByRole("heading", { name: PROVIDER }) });
  await card.getByText("Verified").or(card.getByText("Not verified")).first().waitFor();
  await card.getByRole("button", { name: "Delete" }).click();
  const d = card.locator("dialog[open]");
  await d.waitFor({ state: "visible" });
  await d.getByText("working key(s) use this provider").waitFor();
  const listed = await d.locator("ul.deps li").allInnerTexts();
  for (const name of ["payments-api", "alice-notebook"]) {
    assert.ok(listed.some((l) => l.includes(name)), `${name} is listed: ${listed}`);
  }
  assert.ok(!listed.some((l) => l.includes("billing-service")), "a deleted key is not listed");
});

await flow("09-audit-as-of", async () => {
  await page.keyboard.press("Escape");
  await page.goto(`${BASE}/ui/audit`);
  await page.getByRole("button", { name: "Verify the chain" }).click();
  await page.getByText("Chain intact").waitFor();
  await page.getByLabel("As of (UTC)").fill(asOf);
  await page.getByRole("button", { name: "Show table" }).click();
  await page.locator("#asof-table").waitFor();
  const then = await page.locator(`#asof-table tr[data-key-id="${first.id}"] td`).allInnerTexts();
  assert.equal(then[8], "Expired", `as of ${asOf} billing-service was expired`);
  assert.equal(then[9], "No", "and not yet deleted");
  assert.equal(await page.locator(`#asof-table tr[data-key-id="${rotated}"]`).count(), 1);
  assert.equal(await page.locator("#asof-table tr", { hasText: "alice-notebook" }).count(), 0, "created later");
});

await flow("12-own-keys-and-1280px", async () => {
  // An admin's "My API Keys" is their own keys, with no Owner column.
  await page.goto(`${BASE}/ui/keys`);
  await page.getByRole("heading", { name: "My API Keys" }).waitFor();
  assert.ok((await page.locator("tr[data-key-id]").count()) > 0, "the admin's own keys");
  assert.equal(await page.locator("tr[data-key-id]", { hasText: "alice-notebook" }).count(), 0, "not alice's");
  assert.equal(await page.locator("th", { hasText: "Owner" }).count(), 0);
  // At 1280 px the admin's table, Owner column included, shows every row's actions.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`${BASE}/ui/admin/keys`);
  const fit = await page.evaluate(() => {
    const wrap = document.querySelector(".tablewrap").getBoundingClientRect();
    return [...document.querySelectorAll("td.actions")].map((td) => {
      const r = td.getBoundingClientRect();
      return { left: r.left, right: r.right, wrapRight: wrap.right, width: innerWidth };
    });
  });
  assert.ok(fit.length > 0, "rows with actions");
  for (const c of fit) {
    assert.ok(c.right <= c.wrapRight + 1 && c.right <= c.width, `an Actions cell is cut off: ${JSON.stringify(c)}`);
  }
});
await page.setViewportSize({ width: 1440, height: 900 });

// For the README: the admin's table with every status.
await page.goto(`${BASE}/ui/admin/keys`);
await shot("11-admin-keys");

await context.close();
rmSync(profile, { recursive: true, force: true });
console.log("all flows passed");
