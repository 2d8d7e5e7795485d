// The activity views of the token page: the signed-in person's own (GET /v1/audit/mine: what was
// done with their tokens and to them) and, for the admin, the whole audit trail with filters
// (GET /v1/audit). Entries come oldest first after a cursor; the page reads pages of a bounded
// window and shows the newest first. Every field reaches the page through textContent.

/** Entries asked for per request, requests per view, entries shown. */
const PAGE = 1000;
const MAX_PAGES = 10;
const SHOWN = 200;
const WINDOW = 30 * 86400 * 1000;

/**
 * Wire the views to the page's helpers: `api(method, path)`, `el(tag, text, cls)`,
 * `cell(row, label, content)`, `when(t)`, `show(el, message)`. Returns {loadMine, loadAll, reset}.
 */
export function activity({ api, el, cell, when, show }) {
  const $ = (id) => document.getElementById(id);

  /** The newest entries of `path` that pass `filters`, newest first, within the window. */
  async function newest(path, filters) {
    const since = new Date(Date.now() - WINDOW).toISOString();
    let after = 0;
    let kept = [];
    for (let i = 0; i < MAX_PAGES; i++) {
      const q = new URLSearchParams({ ...filters, since, after: String(after), limit: String(PAGE) });
      const data = await api("GET", `${path}?${q}`);
      kept = kept.concat(data.entries).slice(-SHOWN);
      if (data.entries.length < PAGE) return { entries: kept.reverse(), more: false };
      after = data.next;
    }
    return { entries: kept.reverse(), more: true };
  }

  function who(e) {
    const a = e.actor || {};
    const name = a.subject || (a.issuer ? `issuer ${a.issuer}` : "-");
    return a.tid ? `${name} (token ${a.tid.slice(0, 8)}…)` : name;
  }

  function about(e) {
    const t = e.target || {};
    const parts = [];
    if (t.tid) parts.push(`token ${t.tid}`);
    if (t.sid) parts.push(`session ${t.sid}`);
    if (t.kid) parts.push(`key ${t.kid}`);
    if (t.app) parts.push(`application ${t.app}`);
    return parts.join(", ");
  }

  function render(table, empty, entries, more, none) {
    const body = $(table).querySelector("tbody");
    body.replaceChildren();
    for (const e of entries) {
      const tr = el("tr");
      tr.dataset.kind = e.kind;
      tr.dataset.outcome = e.outcome;
      if (e.target && e.target.tid) tr.dataset.target = e.target.tid;
      cell(tr, "When", when(e.at));
      cell(tr, "What", e.kind);
      cell(tr, "Outcome", el("span", e.outcome, `badge ${e.outcome === "success" ? "live" : "revoked"}`));
      cell(tr, "By", who(e));
      cell(tr, "From", e.actor && e.actor.address ? e.actor.address : "");
      cell(tr, "About", about(e));
      cell(tr, "Details", [e.detail, e.reason].filter(Boolean).join("; "));
      body.append(tr);
    }
    $(table).hidden = false;
    const note = $(empty);
    note.textContent = entries.length === 0 ? none
      : more ? `Showing the newest ${entries.length} of more than ${PAGE * MAX_PAGES} entries: narrow the filters.` : "";
    note.hidden = !note.textContent;
  }

  function filters(ids) {
    const f = {};
    for (const [name, id] of Object.entries(ids)) {
      const v = $(id).value.trim();
      if (v) f[name] = v;
    }
    return f;
  }

  // A view renders only its latest load (a select sends `input` and `change`: two loads).
  const latest = { mine: 0, all: 0 };

  async function loadMine() {
    const mine = ++latest.mine;
    try {
      const { entries, more } = await newest("/v1/audit/mine",
        filters({ kind: "activity-kind", outcome: "activity-outcome" }));
      if (mine !== latest.mine) return;
      show($("activity-error"), "");
      render("activity", "activity-empty", entries, more, "No activity in the last 30 days.");
    } catch (e) {
      show($("activity-error"), `Could not read your activity: ${e.message}`);
    }
  }

  async function loadAll(ev) {
    if (ev) ev.preventDefault();
    const all = ++latest.all;
    try {
      const { entries, more } = await newest("/v1/audit", filters({
        kind: "audit-kind", outcome: "audit-outcome", actor: "audit-actor", subject: "audit-subject",
      }));
      if (all !== latest.all) return;
      show($("audit-error"), "");
      render("audit", "audit-empty", entries, more, "No entry in the last 30 days passes these filters.");
    } catch (e) {
      show($("audit-error"), `Could not read the audit trail: ${e.message}`);
    }
  }

  /** Signing out: the next person starts from the defaults and sees nothing of this one's. */
  function reset() {
    latest.mine++;
    latest.all++;
    for (const id of ["activity-kind", "activity-outcome", "audit-kind", "audit-outcome", "audit-actor", "audit-subject"]) {
      $(id).value = "";
    }
    for (const t of ["activity", "audit"]) $(t).querySelector("tbody").replaceChildren();
    $("audit").hidden = true;
    for (const p of ["activity-empty", "audit-empty"]) $(p).hidden = true;
  }

  for (const id of ["activity-kind", "activity-outcome"]) {
    for (const type of ["input", "change"]) $(id).addEventListener(type, () => loadMine());
  }
  $("activity-refresh").addEventListener("click", () => loadMine());
  $("audit-form").addEventListener("submit", loadAll);
  return { loadMine, loadAll, reset };
}
