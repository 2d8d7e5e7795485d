// The Tessera token page. No framework and no build step: every piece of user text goes into the
// page through textContent (never innerHTML), the credential lives in sessionStorage for this tab
// only and travels in the Authorization header, never in a URL.

const KEY = "tessera.token";
const $ = (id) => document.getElementById(id);
let me = null;

function credential() {
  return sessionStorage.getItem(KEY);
}

/** Call the API with the credential; problem+json errors become thrown Errors with .status. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${credential()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    // A revoked (401) or expired (403, its time-before caveat) credential: back to sign in.
    if (res.status === 401 || (res.status === 403 && /has expired/.test(err.message))) {
      err.status = 401;
      signOut("Your token is no longer valid (expired or revoked). Sign in again.");
    }
    throw err;
  }
  return data;
}

function show(el, message) {
  el.textContent = message;
  el.hidden = !message;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function when(t) {
  if (!t) return "never";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/:\d\d\.\d+Z|:\d\dZ/, " UTC");
}

/** A caveat in plain words. */
function describe(c) {
  const [name, ...args] = c.split(" ");
  const rest = args.join(", ");
  switch (name) {
    case "allow": return `operations: ${rest}`;
    case "resource": return `resources: ${rest}`;
    case "client-ip": return `from networks: ${rest}`;
    case "time-before": return `until ${when(args[0])}`;
    case "time-after": return `not before ${when(args[0])}`;
    case "rate-limit": {
      const [n, p] = (args[0] || "").split("/");
      return `at most ${n} uses per ${p}`;
    }
    case "once": return "single use";
    default: return c;
  }
}

function restrictions(caveats) {
  const ul = el("ul");
  const words = (caveats || []).filter((c) => !c.startsWith("time-before")).map(describe);
  if (words.length === 0) words.push("none beyond expiry");
  for (const w of words) ul.append(el("li", w));
  return ul;
}

function status(t) {
  const span = el("span");
  const now = Date.now();
  const exp = t.expires ? new Date(t.expires).getTime() : null;
  if (t.revoked) span.append(el("span", "revoked", "badge revoked"));
  else if (exp !== null && exp <= now) span.append(el("span", "expired", "badge expired"));
  else {
    span.append(el("span", "active", "badge live"));
    if (exp !== null && exp - now < 7 * 86400 * 1000) span.append(el("span", "expires soon", "badge soon"));
  }
  return span;
}

function cell(row, label, content) {
  const td = el("td");
  td.dataset.label = label;
  if (content instanceof Node) td.append(content); else td.textContent = content;
  row.append(td);
  return td;
}

function revokeButton(t, after, errorEl) {
  const b = el("button", "Revoke", "danger");
  b.type = "button";
  b.setAttribute("aria-label", `Revoke ${t.description || t.tid}`);
  b.disabled = t.revoked;
  b.addEventListener("click", async () => {
    if (!window.confirm(`Revoke "${t.description || t.tid}"? Every copy of it stops working at once.`)) return;
    try {
      await api("POST", `/v1/tokens/${encodeURIComponent(t.tid)}/revoke`, {});
      show(errorEl, "");
      await after();
    } catch (e) {
      show(errorEl, `Could not revoke: ${e.message}`);
    }
  });
  return b;
}

let tokens = [];

function renderTokens() {
  const body = $("tokens").querySelector("tbody");
  body.replaceChildren();
  const q = $("filter").value.trim().toLowerCase();
  const withRevoked = $("show-revoked").checked;
  const key = $("sort").value;
  const rows = tokens
    .filter((t) => withRevoked || !t.revoked)
    .filter((t) => !q || (t.description || "").toLowerCase().includes(q) || (t.caveats || []).some((c) => describe(c).toLowerCase().includes(q)))
    .sort((a, b) => {
      if (key === "description") return (a.description || "").localeCompare(b.description || "");
      return String(b[key] || "").localeCompare(String(a[key] || ""));
    });
  for (const t of rows) {
    const tr = el("tr");
    tr.dataset.tid = t.tid;
    cell(tr, "Description", t.description || "(no description)");
    cell(tr, "Created", when(t.created));
    cell(tr, "Expires", when(t.expires));
    cell(tr, "Last used", t.last_used ? when(t.last_used) : "never");
    cell(tr, "Restrictions", restrictions(t.caveats));
    cell(tr, "Status", status(t));
    cell(tr, "Actions", revokeButton(t, loadTokens, $("tokens-error")));
    body.append(tr);
  }
  $("tokens-empty").hidden = rows.length > 0;
}

async function loadTokens() {
  try {
    const data = await api("GET", "/v1/tokens");
    tokens = data.tokens;
    show($("tokens-error"), "");
    renderTokens();
  } catch (e) {
    show($("tokens-error"), `Could not list your tokens: ${e.message}`);
  }
}

function renderMe() {
  const dl = $("me");
  dl.replaceChildren();
  const r = me.restrictions || {};
  const facts = [
    ["Subject", me.subject],
    ["Administrator", me.admin ? "yes" : "no"],
    ["Expires", when(r.expires)],
    ["Operations", r.operations ? r.operations.join(", ") : "any"],
    ["Resources", r.resources ? r.resources.join(", ") : "any"],
    ["Client networks", r.client_ips ? r.client_ips.join(", ") : "anywhere"],
  ];
  if (r.rate_limits && r.rate_limits.length) facts.push(["Rate limits", r.rate_limits.join(", ")]);
  for (const [k, v] of facts) {
    dl.append(el("dt", k), el("dd", v));
  }
  $("who-text").textContent = `Signed in as ${me.subject}`;
  $("who").hidden = false;
  const max = me.max_ttl_seconds || 0;
  $("create-max").textContent = max ? `at most ${Math.floor(max / 86400)} days` : "";
  for (const o of $("create-expiry").options) {
    const days = parseInt(o.value, 10);
    o.disabled = !isNaN(days) && days * 86400 > max;
  }
  $("create-subject-field").hidden = !me.admin;
  $("admin").hidden = !me.admin;
}

async function enter() {
  me = await api("GET", "/v1/whoami");
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  renderMe();
  await loadTokens();
  if (me.admin) await loadKeys();
}

function signOut(notice) {
  sessionStorage.removeItem(KEY);
  me = null;
  tokens = [];
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("created").hidden = true;
  $("created-token").value = "";
  $("signin-view").hidden = false;
  show($("signin-notice"), notice || "");
}

function list(id) {
  const v = $(id).value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  return v.length ? v : undefined;
}

async function create(ev) {
  ev.preventDefault();
  const err = $("create-error");
  const preset = $("create-expiry").value;
  const ttl = preset === "custom" ? $("create-custom").value.trim() : preset;
  const description = $("create-description").value.trim();
  if (!description) return show(err, "Give the token a description, so you know it again later.");
  if (!ttl) return show(err, "Give a lifetime, e.g. 12h or 14d.");
  const body = { description, ttl, operations: list("create-operations"), resources: list("create-resources"),
    client_ips: list("create-ips"), revocable: $("create-revocable").checked };
  const rate = $("create-rate").value.trim();
  if (rate) body.rate_limit = rate;
  const subject = $("create-subject").value.trim();
  if (me.admin && subject) body.subject = subject;
  try {
    const made = await api("POST", "/v1/tokens", body);
    show(err, "");
    $("create-form").reset();
    $("create-custom").hidden = true;
    $("created-token").value = made.token;
    $("created").hidden = false;
    $("copy-status").textContent = "";
    $("created-token").focus();
    await loadTokens();
  } catch (e) {
    show(err, `Could not create the token: ${e.message}`);
  }
}

async function loadKeys() {
  try {
    const k = await api("GET", "/v1/keys");
    const body = $("keys").querySelector("tbody");
    body.replaceChildren();
    for (const key of k.keys) {
      const tr = el("tr");
      cell(tr, "Key id", key.kid);
      cell(tr, "Kind", "root");
      cell(tr, "State", key.state);
      cell(tr, "Since", when(key.created));
      body.append(tr);
    }
    for (const key of k.signing_keys || []) {
      const tr = el("tr");
      cell(tr, "Key id", key.kid);
      cell(tr, "Kind", key.app ? `${key.alg} (app ${key.app})` : key.alg);
      cell(tr, "State", key.state);
      cell(tr, "Since", when(key.retired_at || key.activated_at || key.created));
      body.append(tr);
    }
    show($("keys-error"), "");
  } catch (e) {
    show($("keys-error"), `Could not list keys: ${e.message}`);
  }
}

async function rotate(path, body, what) {
  if (!window.confirm(`Rotate the ${what}?`)) return;
  try {
    await api("POST", path, body);
    show($("keys-error"), "");
    await loadKeys();
  } catch (e) {
    show($("keys-error"), `Could not rotate the ${what}: ${e.message}`);
  }
}

async function adminList(ev) {
  if (ev) ev.preventDefault();
  const subject = $("admin-subject").value.trim();
  const err = $("admin-error");
  if (!subject) return show(err, "Name a subject.");
  try {
    const data = await api("GET", `/v1/tokens?subject=${encodeURIComponent(subject)}`);
    const table = $("admin-tokens");
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const t of data.tokens) {
      const tr = el("tr");
      tr.dataset.tid = t.tid;
      cell(tr, "Description", t.description || "(no description)");
      cell(tr, "Expires", when(t.expires));
      cell(tr, "Last used", t.last_used ? when(t.last_used) : "never");
      cell(tr, "Restrictions", restrictions(t.caveats));
      cell(tr, "Status", status(t));
      cell(tr, "Actions", revokeButton(t, adminList, err));
      body.append(tr);
    }
    table.hidden = false;
    show(err, data.tokens.length ? "" : `No tokens for ${subject}.`);
  } catch (e) {
    show(err, `Could not list ${subject}'s tokens: ${e.message}`);
  }
}

function start() {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("signin-token").value.trim();
    const err = $("signin-error");
    if (!token) return show(err, "Paste your token first.");
    sessionStorage.setItem(KEY, token);
    $("signin-token").value = "";
    try {
      show(err, "");
      show($("signin-notice"), "");
      await enter();
    } catch (e) {
      sessionStorage.removeItem(KEY);
      $("signin-view").hidden = false;
      show(err, `Could not sign in: ${e.message}`);
    }
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  $("create-form").addEventListener("submit", create);
  $("create-expiry").addEventListener("change", () => {
    $("create-custom").hidden = $("create-expiry").value !== "custom";
  });
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("created-token").value);
      $("copy-status").textContent = "Copied.";
    } catch {
      $("created-token").select();
      $("copy-status").textContent = "Select the text and copy it (the browser refused the clipboard).";
    }
  });
  $("created-done").addEventListener("click", () => {
    $("created-token").value = "";
    $("created").hidden = true;
  });
  for (const id of ["filter", "sort", "show-revoked"]) $(id).addEventListener("input", renderTokens);
  $("admin-form").addEventListener("submit", adminList);
  $("rotate-root").addEventListener("click", () => rotate("/v1/keys/rotate", {}, "root key"));
  $("rotate-es256").addEventListener("click", () => rotate("/v1/keys/signing/rotate", { alg: "ES256" }, "ES256 signing key"));
  $("rotate-eddsa").addEventListener("click", () => rotate("/v1/keys/signing/rotate", { alg: "EdDSA" }, "EdDSA signing key"));
  if (credential()) enter().catch((e) => { if (e.status !== 401) signOut(`Sign in again (${e.message}).`); });
}

start();
