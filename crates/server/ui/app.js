// The Tessera token page. No framework and no build step: every piece of user text goes into the
// page through textContent (never innerHTML), the credential lives in sessionStorage for this tab
// only and travels in the Authorization header, never in a URL.

import { activity } from "/ui/activity.js";

const KEY = "tessera.token";
const $ = (id) => document.getElementById(id);
let me = null;

function credential() {
  return sessionStorage.getItem(KEY);
}

const LOST = "Your token is no longer valid (expired or revoked). Sign in again.";

/**
 * Call the API with a credential (the signed-in one unless another is given); problem+json
 * errors become thrown Errors with .status. The signed-in credential failing as revoked (401) or
 * expired (403, its time-before caveat) sends the person back to sign in with a notice; a token
 * only being tried at sign-in is not "no longer" valid, and gets its reason alone.
 */
async function api(method, path, body, token = credential()) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    if (res.status === 401 || (res.status === 403 && /has expired/.test(err.message))) {
      err.status = 401;
      if (token && token === credential()) signOut(LOST);
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

const DAY = 86400 * 1000;
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** A time (RFC 3339 text or milliseconds), or null; nothing parseable is null. */
function ms(t) {
  if (t === null || t === undefined) return null;
  const v = typeof t === "number" ? t : Date.parse(t);
  return isNaN(v) ? null : v;
}

function when(t) {
  if (!t) return "never";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/:\d\d\.\d+Z|:\d\dZ/, " UTC");
}

/** A time in words for a sentence: "12 Dec 2026 14:05 UTC". */
function day(t) {
  const d = new Date(t);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())} UTC`;
}

/** One caveat (one layer) in plain words. */
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
      const l = rate(args[0] || "");
      return l ? rateWords(l) : c;
    }
    case "once": return "single use";
    default: return c;
  }
}

// ---- effective restrictions ----------------------------------------------------------------
// A token's caveats are layers: its ancestors' and its own. What it may do is all of them at
// once. The service folds them for /v1/whoami and /v1/verify (core's Restrictions::add); a
// token list carries only the caveats, so the page folds them the same way here. The browser
// test holds the two to agreement (a row and /v1/whoami for the same token read the same).

/** A rate-limit budget `N/P` (`10/1m`, `5/s`, `1000/d`) as {count, period seconds}, or null. */
function rate(text) {
  const m = /^(\d{1,10})\/(\d{0,10})([smhd])$/.exec(text);
  if (!m) return null;
  const count = Number(m[1]);
  const period = (m[2] ? Number(m[2]) : 1) * { s: 1, m: 60, h: 3600, d: 86400 }[m[3]];
  return count >= 1 && count <= 1e9 && period >= 1 && period <= 30 * 86400 ? { count, period } : null;
}

function rateWords({ count, period }) {
  const [unit, name] = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]].find(([u]) => period % u === 0);
  const k = period / unit;
  return `${count} ${count === 1 ? "use" : "uses"} per ${k === 1 ? name : `${k} ${name}s`}`;
}

const isDotSegment = (s) => /^(\.|%2[eE]){1,2}$/.test(s);

/** Does a resource pattern (a name, or a prefix ending in `/*`) allow this resource? */
function matches(pattern, resource) {
  if (pattern.endsWith("/*")) {
    const prefix = pattern.slice(0, -1);
    return resource.startsWith(prefix) && !resource.slice(prefix.length).split("/").some(isDotSegment);
  }
  return pattern === resource;
}

/** What two resource patterns both allow, as one of them, or null. */
function meetResource(a, b) {
  const pa = a.endsWith("/*") ? a.slice(0, -1) : null;
  const pb = b.endsWith("/*") ? b.slice(0, -1) : null;
  if (pa === null && pb === null) return a === b ? a : null;
  if (pb === null) return matches(a, b) ? b : null;
  if (pa === null) return matches(b, a) ? a : null;
  if (matches(b, pa)) return a;
  if (matches(a, pb)) return b;
  return null;
}

function ipv4(text) {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) < 256)) return null;
  return parts.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n);
}

function ipv6(text) {
  let t = text;
  const last = t.lastIndexOf(":");
  if (t.slice(last + 1).includes(".")) {
    const v4 = ipv4(t.slice(last + 1));
    if (v4 === null) return null;
    t = `${t.slice(0, last + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const halves = t.split("::");
  if (halves.length > 2) return null;
  const groups = (h) => (h === "" ? [] : h.split(":"));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  if (!all.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  return all.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** A client network (`10.0.0.0/8`, a bare address, IPv6) with its host bits cleared, or null. */
function network(text) {
  const [addr, len, extra] = text.split("/");
  if (extra !== undefined) return null;
  const v6 = addr.includes(":");
  const bits = v6 ? ipv6(addr) : ipv4(addr);
  const width = v6 ? 128 : 32;
  const n = len === undefined ? width : /^\d{1,3}$/.test(len) ? Number(len) : NaN;
  if (bits === null || !(n >= 0 && n <= width)) return null;
  const host = (1n << BigInt(width - n)) - 1n;
  const net = bits & ~host;
  // IPv4 printed as the service prints it (`10.1.2.3/8` is `10.0.0.0/8`); IPv6 as written.
  const shown = v6 ? text.toLowerCase() : `${[24n, 16n, 8n, 0n].map((s) => (net >> s) & 255n).join(".")}/${n}`;
  return { v6, len: n, net, width, text: shown };
}

function contains(a, b) {
  if (a.v6 !== b.v6 || a.len > b.len) return false;
  const host = (1n << BigInt(a.width - a.len)) - 1n;
  return (b.net & ~host) === a.net;
}

function dedup(items, key = (x) => x) {
  const seen = new Set();
  return items.filter((x) => !seen.has(key(x)) && seen.add(key(x)));
}

/** Every caveat folded: the intersection of each allow, resource and client-ip layer, the
 *  earliest expiry, the latest start, every distinct rate limit. null means unrestricted. */
function fold(caveats) {
  const r = { operations: null, resources: null, networks: null, expires: null, notBefore: null, rates: [], once: false, other: [] };
  for (const c of caveats || []) {
    const [name, ...args] = c.split(" ");
    switch (name) {
      case "allow":
        r.operations = r.operations === null ? dedup(args) : r.operations.filter((o) => args.includes(o));
        break;
      case "resource":
        r.resources = r.resources === null ? dedup(args)
          : dedup(r.resources.flatMap((a) => args.map((b) => meetResource(a, b)).filter((x) => x !== null)));
        break;
      case "client-ip": {
        const nets = args.map(network).filter(Boolean);
        r.networks = r.networks === null ? dedup(nets, (n) => n.text)
          : dedup(r.networks.flatMap((a) => nets.map((b) => (contains(a, b) ? b : contains(b, a) ? a : null)).filter(Boolean)), (n) => n.text);
        break;
      }
      case "time-before": {
        const t = ms(args[0]);
        if (t !== null) r.expires = r.expires === null ? t : Math.min(r.expires, t);
        break;
      }
      case "time-after": {
        const t = ms(args[0]);
        if (t !== null) r.notBefore = r.notBefore === null ? t : Math.max(r.notBefore, t);
        break;
      }
      case "rate-limit": {
        const l = rate(args[0] || "");
        if (!l) r.other.push(c);
        else if (!r.rates.some((x) => x.count === l.count && x.period === l.period)) r.rates.push(l);
        break;
      }
      case "once": r.once = true; break;
      default: r.other.push(c);
    }
  }
  return r;
}

/** The restrictions /v1/whoami answers (already folded by the service), in fold()'s shape. */
function fromService(v) {
  return {
    operations: v.operations ?? null,
    resources: v.resources ?? null,
    networks: v.client_ips ? v.client_ips.map((text) => ({ text })) : null,
    expires: ms(v.expires),
    notBefore: ms(v.not_before),
    rates: (v.rate_limits || []).map(rate).filter(Boolean),
    once: Boolean(v.once),
    other: [],
  };
}

/** "a", "a and b", "a, b and c". */
function and(items, word = "and") {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} ${word} ${items[items.length - 1]}`;
}

/** Effective restrictions in one line of words: "read on docs/* from 127.0.0.0/8, 50 uses per
 *  minute, until 12 Dec 2026 14:05 UTC". */
function sentence(r) {
  if ([r.operations, r.resources, r.networks].some((s) => s && s.length === 0)) {
    return "nothing: its layers leave no operation, resource or network in common";
  }
  let what = `${r.operations ? and(r.operations) : "any operation"} on ${r.resources ? and(r.resources) : "any resource"}`;
  if (r.networks) what += ` from ${and(r.networks.map((n) => n.text), "or")}`;
  const parts = [what, ...r.rates.map(rateWords)];
  if (r.once) parts.push("single use");
  if (r.notBefore !== null) parts.push(`not before ${day(r.notBefore)}`);
  parts.push(r.expires === null ? "no expiry" : `until ${day(r.expires)}`);
  for (const c of r.other) parts.push(`and "${c}"`);
  return parts.join(", ");
}

/** The restrictions cell: the effective ones in one line, the layers on demand. */
function restrictions(caveats) {
  const wrap = el("div");
  wrap.append(el("p", sentence(fold(caveats)), "effective"));
  if (caveats && caveats.length) {
    const layers = el("details");
    const ul = el("ul");
    for (const c of caveats) ul.append(el("li", describe(c)));
    layers.append(el("summary", "layer by layer"), ul);
    wrap.append(layers);
  }
  return wrap;
}

// ---- token lists ---------------------------------------------------------------------------

/** "Expires soon": under a quarter of the token's own lifetime left, and at most 7 days (so a
 *  fresh 7-day token is not badged at once, and a 90-day one is badged in its last week). */
function expiresSoon(t, now) {
  const exp = ms(t.expires);
  if (exp === null) return false;
  const created = ms(t.created);
  const life = created === null ? Infinity : exp - created;
  return exp - now < Math.min(life / 4, 7 * DAY);
}

const expired = (t, now) => ms(t.expires) !== null && ms(t.expires) <= now;

function status(t, now) {
  const span = el("span");
  if (t.revoked) span.append(el("span", "revoked", "badge revoked"));
  else if (expired(t, now)) span.append(el("span", "expired", "badge expired"));
  else {
    span.append(el("span", "active", "badge live"));
    if (expiresSoon(t, now)) span.append(el("span", "expires soon", "badge soon"));
  }
  return span;
}

function cell(row, label, content) {
  const td = el("td");
  td.dataset.label = label;
  if (content instanceof Node) td.append(content); else if (content) td.textContent = content;
  row.append(td);
  return td;
}

/** Revoke, named after the token for a screen reader; none for a token that is already revoked
 *  or expired (nothing left to revoke). */
function revokeButton(t, now, list) {
  if (t.revoked || expired(t, now)) return null;
  const name = t.description || t.tid;
  const b = el("button", "Revoke", "danger");
  b.type = "button";
  b.setAttribute("aria-label", `Revoke ${name}`);
  b.addEventListener("click", async () => {
    if (!window.confirm(`Revoke "${name}"? Every copy of it stops working at once.`)) return;
    try {
      await api("POST", `/v1/tokens/${encodeURIComponent(t.tid)}/revoke`, {});
      show($(list.error), "");
      await list.reload();
    } catch (e) {
      show($(list.error), `Could not revoke: ${e.message}`);
    }
  });
  return b;
}

/** The person's own tokens, and (admin) any subject's: each table has a filter, a sort and a
 *  show-revoked toggle of its own. */
const mine = {
  tokens: [], table: "tokens", filter: "filter", sort: "sort", revoked: "show-revoked", empty: "tokens-empty",
  error: "tokens-error", none: () => "No tokens.", reload: () => loadTokens(),
};
const theirs = {
  tokens: [], subject: "", table: "admin-tokens", filter: "admin-filter", sort: "admin-sort",
  revoked: "admin-show-revoked", empty: "admin-empty", error: "admin-error",
  none: () => `No tokens for ${theirs.subject}.`, reload: () => loadSubject(theirs.subject),
};

function renderTokens(list) {
  const body = $(list.table).querySelector("tbody");
  body.replaceChildren();
  const q = $(list.filter).value.trim().toLowerCase();
  const withRevoked = $(list.revoked).checked;
  const key = $(list.sort).value;
  const now = Date.now();
  const found = (t) => [t.description || "", sentence(fold(t.caveats)), ...(t.caveats || []).map(describe)]
    .some((s) => s.toLowerCase().includes(q));
  const rows = list.tokens
    .filter((t) => withRevoked || !t.revoked)
    .filter((t) => !q || found(t))
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
    cell(tr, "Status", status(t, now));
    cell(tr, "Actions", revokeButton(t, now, list));
    body.append(tr);
  }
  const empty = $(list.empty);
  empty.textContent = list.tokens.length ? "No token matches (revoked tokens are hidden unless shown)." : list.none();
  empty.hidden = rows.length > 0;
}

async function loadTokens() {
  try {
    const data = await api("GET", "/v1/tokens");
    mine.tokens = data.tokens;
    show($("tokens-error"), "");
    renderTokens(mine);
  } catch (e) {
    show($("tokens-error"), `Could not list your tokens: ${e.message}`);
  }
  // What was just done (a token created or revoked) shows in the activity too.
  if (credential()) await views.loadMine();
}

function renderMe() {
  const dl = $("me");
  dl.replaceChildren();
  dl.append(el("dt", "Subject"), el("dd", me.subject));
  dl.append(el("dt", "Administrator"), el("dd", me.admin ? "yes" : "no"));
  dl.append(el("dt", "Allows"), el("dd", sentence(fromService(me.restrictions || {})), "effective"));
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

/** Sign in with a token: it is kept (in this tab) only once the service has said who it is. */
async function enter(token) {
  me = await api("GET", "/v1/whoami", undefined, token);
  sessionStorage.setItem(KEY, token);
  // The text leaves the form as soon as it is accepted, before the view it opens is shown.
  $("signin-token").value = "";
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  renderMe();
  await loadTokens();
  if (me.admin) await loadKeys();
}

function signOut(notice) {
  sessionStorage.removeItem(KEY);
  me = null;
  mine.tokens = [];
  theirs.tokens = [];
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("created").hidden = true;
  $("created-token").value = "";
  $("admin-list").hidden = true;
  // The next person starts from the defaults, not from this one's filters.
  for (const l of [mine, theirs]) {
    $(l.filter).value = "";
    $(l.sort).value = "created";
    $(l.revoked).checked = false;
  }
  $("admin-subject").value = "";
  views.reset();
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

async function loadSubject(subject) {
  const err = $("admin-error");
  try {
    const data = await api("GET", `/v1/tokens?subject=${encodeURIComponent(subject)}`);
    theirs.subject = subject;
    theirs.tokens = data.tokens;
    show(err, "");
    $("admin-list").hidden = false;
    renderTokens(theirs);
  } catch (e) {
    show(err, `Could not list ${subject}'s tokens: ${e.message}`);
  }
}

async function adminList(ev) {
  ev.preventDefault();
  const subject = $("admin-subject").value.trim();
  if (!subject) return show($("admin-error"), "Name a subject.");
  await loadSubject(subject);
}

const views = activity({ api, el, cell, when, show });

function start() {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const field = $("signin-token");
    const token = field.value.trim();
    const err = $("signin-error");
    if (!token) return show(err, "Paste your token first.");
    try {
      show(err, "");
      show($("signin-notice"), "");
      await enter(token);
    } catch (e) {
      // What was pasted stays, to be corrected; nothing was stored.
      show(err, `Could not sign in: ${e.message}`);
    }
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  $("create-form").addEventListener("submit", create);
  for (const type of ["input", "change"]) {
    $("create-expiry").addEventListener(type, () => {
      $("create-custom").hidden = $("create-expiry").value !== "custom";
    });
  }
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
  // Selects and checkboxes: `change` as well as `input` (not every browser or assistive tool
  // sends both); rendering twice is harmless.
  for (const l of [mine, theirs]) {
    for (const id of [l.filter, l.sort, l.revoked]) {
      for (const type of ["input", "change"]) $(id).addEventListener(type, () => renderTokens(l));
    }
  }
  $("admin-form").addEventListener("submit", adminList);
  $("rotate-root").addEventListener("click", () => rotate("/v1/keys/rotate", {}, "root key"));
  $("rotate-es256").addEventListener("click", () => rotate("/v1/keys/signing/rotate", { alg: "ES256" }, "ES256 signing key"));
  $("rotate-eddsa").addEventListener("click", () => rotate("/v1/keys/signing/rotate", { alg: "EdDSA" }, "EdDSA signing key"));
  const kept = credential();
  if (kept) enter(kept).catch((e) => { if (e.status !== 401) signOut(`Sign in again (${e.message}).`); });
}

start();
