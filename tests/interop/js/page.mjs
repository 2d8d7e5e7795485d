// Drives the token page in Debian's headless Chromium (playwright-core, no browser download) and
// prints what it saw as JSON; crates/cli/tests/browser.rs asserts on it. Elements a check looks
// for are counted before they are used, so a page without them gives a wrong answer to assert
// on, not a 30 s timeout.
//
// Input (a JSON file named by argv[2]): {url, admin, alice, short_wait_ms, shots}.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = { steps: [] };
const DAY = 86400 * 1000;
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

/** The text of the first element `sel` finds under `scope`, or null when there is none. */
async function textOf(scope, sel) {
  const l = scope.locator(sel);
  return (await l.count()) ? l.first().textContent() : null;
}

/** Whether the document is wider than the viewport (it would scroll sideways). */
function overflows() {
  return page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
}

function widthOf(sel) {
  return page.evaluate((s) => document.querySelector(s)?.getBoundingClientRect().width ?? null, sel);
}

/** Enabled buttons in a row (a revoked or expired token has nothing to revoke). */
function enabledButtons(row) {
  return row.locator("button:not([disabled])").count();
}

function descriptions(table) {
  return page.evaluate((t) => [...document.querySelectorAll(`#${t} tbody tr td[data-label=Description]`)]
    .map((td) => td.textContent), table);
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
  // A first sign-in with a bad token: its reason, no "no longer valid" notice, the paste kept.
  await signIn("not-a-token");
  await page.waitForSelector("#signin-error:not([hidden])");
  out.bad_signin_error = await page.textContent("#signin-error");
  out.bad_signin_notice_visible = await page.isVisible("#signin-notice");
  out.bad_signin_kept = await page.inputValue("#signin-token");
  await signIn(cfg.alice);
  await page.waitForSelector("#app-view:not([hidden])");
  out.who = await page.textContent("#who-text");
  out.alice_admin_visible = await page.isVisible("#admin");
  out.me = await page.textContent("#me");
  out.signin_field_after = await page.inputValue("#signin-token");
  // The tokens made below are created in a later second than alice's own, so sorting by
  // created and by description give different orders (created has whole seconds).
  await page.waitForSelector("#tokens tbody tr");
  const aliceCreated = await page.evaluate(async () => {
    const r = await fetch("/v1/tokens", { headers: { Authorization: `Bearer ${sessionStorage.getItem("tessera.token")}` } });
    return (await r.json()).tokens.find((t) => t.description === "alice's manager").created;
  });
  await page.waitForFunction((c) => Date.now() >= Date.parse(c) + 1000, aliceCreated);
  out.resources_input_width = await widthOf("#create-resources");

  // Create a token with restrictions, from the 7-day preset; its text is shown once.
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
  out.row_effective = await textOf(row, ".effective");
  out.row_layers = await textOf(row, "details");
  out.row_layers_open = await row.locator("details").count() ? await row.locator("details").first().evaluate((d) => d.open) : null;
  out.row_soon_badges = await row.locator(".badge.soon").count();
  out.row_revoke_named = await row.getByRole("button", { name: `Revoke ${description}`, exact: true }).count();
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

  // A second 7-day token with every kind of restriction: its one line of words.
  await page.fill("#create-description", "week");
  await page.selectOption("#create-expiry", "7d");
  await page.fill("#create-operations", "read");
  await page.fill("#create-resources", "docs/*");
  await page.fill("#create-ips", "127.0.0.0/8");
  await page.fill("#create-rate", "50/1m");
  await page.click("#create-form button[type=submit]");
  await page.waitForSelector("#created:not([hidden])");
  const week = await page.inputValue("#created-token");
  await page.click("#created-done");
  const weekRow = page.locator("#tokens tbody tr", { hasText: "week" });
  await weekRow.waitFor();
  out.week_effective = await textOf(weekRow, ".effective");

  // Sorting answers a `change` event alone (some browsers and assistive tools send no `input`).
  out.order_before = await descriptions("tokens");
  await page.evaluate(() => {
    const s = document.getElementById("sort");
    s.value = "description";
    s.dispatchEvent(new Event("change", { bubbles: true }));
  });
  out.order_by_description = await descriptions("tokens");
  await page.selectOption("#sort", "created");

  // Revoke, with confirmation; the list updates.
  const madeTid = await row.getAttribute("data-tid");
  await row.getByRole("button", { name: /Revoke/ }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll("#tokens tbody tr")].some((r) => r.textContent.includes("ci <img")));
  out.verify_after_revoke = await verify(made, { operation: "read", resource: "docs/1" });
  await page.check("#show-revoked");
  out.revoked_row_status = await row.locator("td[data-label=Status]").textContent();
  out.revoked_row_buttons = await enabledButtons(row);

  // Her activity (GET /v1/audit/mine) lists the token's creation and its revocation, and
  // nothing of bob's.
  await page.waitForFunction((tid) => document.querySelector(
    `#activity tbody tr[data-kind="token.revoke"][data-target="${tid}"]`), madeTid);
  out.activity_made = await page.locator(`#activity tbody tr[data-kind="token.mint"][data-target="${madeTid}"]`).count();
  out.activity_revoked = await page.locator(`#activity tbody tr[data-kind="token.revoke"][data-target="${madeTid}"]`).count();
  out.activity_mentions_bob = (await page.textContent("#activity")).includes("bob");
  out.activity_first_kind = await page.locator("#activity tbody tr").first().getAttribute("data-kind");

  // A non-admin is refused by the API whatever the page shows.
  out.alice_keys_status = await page.evaluate(async () => {
    const r = await fetch("/v1/keys", { headers: { Authorization: `Bearer ${sessionStorage.getItem("tessera.token")}` } });
    return r.status;
  });

  // Narrow screen.
  await page.setViewportSize({ width: 375, height: 800 });
  out.overflow_375 = await overflows();
  await shot("mobile");
  await page.setViewportSize({ width: 1200, height: 900 });

  // Admin: another subject's tokens, filtered, revoked (then hidden unless asked for); keys.
  await page.click("#signout");
  await page.waitForSelector("#signin-view:not([hidden])");
  await signIn(cfg.admin);
  await page.waitForSelector("#admin:not([hidden])");
  await page.waitForSelector("#keys tbody tr");
  out.keys_rows = await page.locator("#keys tbody tr").count();
  // The next person signs in to the defaults, not to alice's "show revoked".
  out.controls_reset = !(await page.isChecked("#show-revoked"));
  await page.fill("#admin-subject", "bob");
  await page.click("#admin-form button[type=submit]");
  await page.waitForSelector("#admin-tokens:not([hidden]) tbody tr");
  out.admin_subject_width = await widthOf("#admin-subject");
  out.bob_rows = await page.locator("#admin-tokens tbody tr").count();
  await shot("admin");
  if (await page.locator("#admin-filter").count()) {
    await page.fill("#admin-filter", "phone");
    out.bob_filtered = await descriptions("admin-tokens");
    await page.fill("#admin-filter", "");
  }
  const laptop = page.locator("#admin-tokens tbody tr", { hasText: "bob's laptop" });
  await laptop.getByRole("button", { name: "Revoke bob's laptop", exact: true }).click();
  // Gone from the list, or (a page without the toggle) shown as revoked.
  await page.waitForFunction(() => {
    const r = [...document.querySelectorAll("#admin-tokens tbody tr")].find((r) => r.textContent.includes("bob's laptop"));
    return !r || r.textContent.includes("revoked");
  });
  out.bob_revoked_hidden = (await laptop.count()) === 0;
  if (await page.locator("#admin-show-revoked").count()) await page.check("#admin-show-revoked");
  out.bob_status = await textOf(laptop, "td[data-label=Status]");
  out.bob_revoked_buttons = await enabledButtons(laptop);
  // The admin's audit trail, filtered by kind: revocations only, bob's laptop among them.
  const laptopTid = await laptop.getAttribute("data-tid");
  await page.selectOption("#audit-kind", "token.revoke");
  await page.click("#audit-form button[type=submit]");
  await page.waitForSelector("#audit:not([hidden]) tbody tr");
  out.audit_kinds = [...new Set(await page.locator("#audit tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.kind)))];
  out.audit_has_laptop = await page.locator(`#audit tbody tr[data-target="${laptopTid}"]`).count();
  // The admin view at 375 px: signing-key ids (43 characters) wrap instead of widening the page.
  await page.setViewportSize({ width: 375, height: 800 });
  out.admin_overflow_375 = await overflows();
  await shot("admin-mobile");
  await page.setViewportSize({ width: 1200, height: 900 });

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

  // Days later (the page's clock moved on; the service's has not): the week token is badged
  // "expires soon" in its last quarter, and once expired it has no Revoke button.
  await signIn(cfg.alice);
  await weekRow.waitFor();
  await page.clock.setFixedTime(Date.now() + 6.5 * DAY);
  await page.reload();
  await weekRow.waitFor();
  out.week_soon_later = await weekRow.locator(".badge.soon").count();
  await page.clock.setFixedTime(Date.now() + 8 * DAY);
  await page.reload();
  await weekRow.waitFor();
  out.week_status_expired = await weekRow.locator("td[data-label=Status]").textContent();
  out.week_expired_buttons = await enabledButtons(weekRow);

  // The page folds a row's caveats as the service does: signed in with the week token itself,
  // the service's own folding (/v1/whoami) reads the same.
  await page.click("#signout");
  await signIn(week);
  await page.waitForSelector("#app-view:not([hidden])");
  out.week_me_effective = await textOf(page, "#me .effective");

  out.alerts = alerts;
  out.console_errors = consoleErrors.filter((e) => !e.includes("401") && !e.includes("400") && !e.includes("403"));
  out.token_in_url = urls.some((u) => [cfg.alice, made, week].some((t) => u.includes(t.slice(0, 24))));
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack || e);
  await shot("failure").catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
