// Drives the token page in Debian's headless Chromium (playwright-core, no browser download) and
// prints what it saw as JSON; crates/cli/tests/browser.rs asserts on it.
//
// Input (a JSON file named by argv[2]): {url, admin, alice, short_wait_ms, shots}.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = { steps: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
const page = await context.newPage();
const alerts = [];
const consoleErrors = [];
page.on("dialog", async (d) => {
  if (d.type() === "alert") alerts.push(d.message());
  await d.accept();
});
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
const urls = [];
page.on("request", (r) => urls.push(r.url()));

async function shot(name) {
  if (cfg.shots) await page.screenshot({ path: `${cfg.shots}/${name}.png`, fullPage: true });
}

async function signIn(token) {
  await page.fill("#signin-token", token);
  await page.click("#signin-form button[type=submit]");
}

async function verify(token, context) {
  const res = await fetch(`${cfg.url}/v1/verify`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token, context }),
  });
  return res.status;
}

try {
  // Sign in.
  await page.goto(`${cfg.url}/`);
  await page.waitForSelector("#signin-form");
  out.unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((e) => e.labels.length === 0 && !e.getAttribute("aria-label"))
      .map((e) => e.id));
  // Keyboard: the token field is reachable with Tab.
  let focused = "";
  for (let i = 0; i < 8 && focused !== "signin-token"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  }
  out.tab_reaches_token = focused === "signin-token";
  await shot("signin");
  await signIn("not-a-token");
  await page.waitForSelector("#signin-error:not([hidden])");
  out.bad_signin_error = await page.textContent("#signin-error");
  await signIn(cfg.alice);
  await page.waitForSelector("#app-view:not([hidden])");
  out.who = await page.textContent("#who-text");
  out.alice_admin_visible = await page.isVisible("#admin");
  out.me = await page.textContent("#me");

  // Create a token with restrictions; its text is shown once.
  const description = "ci <img src=x onerror=alert(1)>";
  await page.fill("#create-description", description);
  await page.selectOption("#create-expiry", "7d");
  await page.fill("#create-operations", "read");
  await page.fill("#create-resources", "docs/*");
  await page.fill("#create-rate", "10/1m");
  await page.click("#create-form button[type=submit]");
  await page.waitForSelector("#created:not([hidden])");
  const made = await page.inputValue("#created-token");
  out.created_shown = made.length > 20;
  await page.waitForSelector("#tokens tbody tr");
  await shot("created");
  out.verify_read = await verify(made, { operation: "read", resource: "docs/1" });
  out.verify_write = await verify(made, { operation: "write", resource: "docs/1" });
  out.verify_elsewhere = await verify(made, { operation: "read", resource: "admin/1" });
  const row = page.locator("#tokens tbody tr", { hasText: "ci <img" });
  out.row_description = await row.locator("td").first().textContent();
  out.row_restrictions = await row.locator("td").nth(4).textContent();
  out.img_elements = await page.evaluate(() => document.querySelectorAll("main img").length);

  // A bad create shows its error beside the form.
  await page.fill("#create-description", "broken");
  await page.fill("#create-rate", "lots");
  await page.click("#create-form button[type=submit]");
  await page.waitForSelector("#create-error:not([hidden])");
  out.create_error = await page.textContent("#create-error");
  await page.fill("#create-rate", "");

  // Reload: the token text is gone, the record is there.
  await page.reload();
  await page.waitForSelector("#tokens tbody tr");
  out.after_reload_created_hidden = await page.isHidden("#created");
  out.after_reload_text = await page.inputValue("#created-token");
  out.after_reload_row = await page.locator("#tokens tbody tr", { hasText: "ci <img" }).count();
  await shot("tokens");

  // Revoke, with confirmation; the list updates.
  await page.locator("#tokens tbody tr", { hasText: "ci <img" }).getByRole("button", { name: /Revoke/ }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll("#tokens tbody tr")].some((r) => r.textContent.includes("ci <img")));
  out.verify_after_revoke = await verify(made, { operation: "read", resource: "docs/1" });
  await page.check("#show-revoked");
  out.revoked_row_status = await page.locator("#tokens tbody tr", { hasText: "ci <img" }).locator("td").nth(5).textContent();

  // A non-admin is refused by the API whatever the page shows.
  out.alice_keys_status = await page.evaluate(async () => {
    const r = await fetch("/v1/keys", { headers: { Authorization: `Bearer ${sessionStorage.getItem("tessera.token")}` } });
    return r.status;
  });

  // Narrow screen.
  await page.setViewportSize({ width: 375, height: 800 });
  out.overflow_375 = await page.evaluate(() => document.documentElement.scrollWidth > 375);
  await shot("mobile");
  await page.setViewportSize({ width: 1200, height: 900 });

  // Admin: another subject's tokens, revoked; keys.
  await page.click("#signout");
  await page.waitForSelector("#signin-view:not([hidden])");
  await signIn(cfg.admin);
  await page.waitForSelector("#admin:not([hidden])");
  await page.waitForSelector("#keys tbody tr");
  out.keys_rows = await page.locator("#keys tbody tr").count();
  await page.fill("#admin-subject", "bob");
  await page.click("#admin-form button[type=submit]");
  await page.waitForSelector("#admin-tokens:not([hidden]) tbody tr");
  await shot("admin");
  await page.locator("#admin-tokens tbody tr").first().getByRole("button", { name: /Revoke/ }).click();
  await page.waitForFunction(() => document.querySelector("#admin-tokens tbody tr td:nth-child(5)")?.textContent.includes("revoked"));
  out.bob_status = await page.locator("#admin-tokens tbody tr").first().locator("td").nth(4).textContent();

  // An expired credential leads back to sign in (a token that lives 3 s, minted now).
  await page.click("#signout");
  const minted = await fetch(`${cfg.url}/v1/tokens`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.admin}` },
    body: JSON.stringify({ subject: "carol", ttl: "3s", operations: ["tokens.list"] }),
  }).then((r) => r.json());
  await signIn(minted.token);
  await page.waitForSelector("#app-view:not([hidden])");
  await page.waitForTimeout(cfg.short_wait_ms);
  await page.reload();
  await page.waitForSelector("#signin-view:not([hidden])");
  out.expired_notice = await page.textContent("#signin-notice");

  out.alerts = alerts;
  out.console_errors = consoleErrors.filter((e) => !e.includes("401") && !e.includes("400") && !e.includes("403"));
  out.token_in_url = urls.some((u) => u.includes(cfg.alice.slice(0, 24)) || u.includes(made.slice(0, 24)));
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack || e);
  await shot("failure").catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
