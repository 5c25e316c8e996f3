// The approver app: sign in (or set a password from an invite link, then add a passkey), the inbox of
// what I can vote on (live, newest first, with countdowns and red flags), a request's detail, batch
// decisions, my history, settings. Views are routed by the hash: #/, #/requests/<id>, #/history, #/settings.
// Other modules (push.js, passkeys.js) hook in through window.preloop: see `hooks` below.
const $ = (selector) => document.querySelector(selector);
const preloop = (window.preloop = window.preloop || {});
// beforeDecide(request, action, body) may change the vote's body (e.g. add a passkey assertion) or throw;
// afterRender(article, request) may add to a card; afterSignIn(me) runs once the inbox is shown.
preloop.hooks = Object.assign({ beforeDecide: [], afterRender: [], afterSignIn: [] }, preloop.hooks || {});

// drafts and errors are kept per request id, so a live re-render never wipes a typed reason or an error.
const state = { view: "mine", items: new Map(), drafts: new Map(), errors: new Map(), selected: new Set(),
                events: null, me: null, detail: null };

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    ...options,
  });
  // The service worker answers from its copy when the network is gone, and says so in a header.
  showOffline(response.headers.get("x-preloop-offline") === "1");
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
  return body;
}
preloop.api = api;

function showOffline(offline) {
  $("#offline").hidden = !offline;
  document.body.classList.toggle("is-offline", offline);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function inWords(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  return `${Math.round(seconds / 86400)} days`;
}

// "times out in 9 min · escalates in 4 min", recomputed every 15 s from the absolute times.
function timeLeft(request) {
  const now = Date.now();
  const parts = [];
  if (request.expires_at) {
    const left = (Date.parse(request.expires_at) - now) / 1000;
    parts.push(left > 0 ? `times out in ${inWords(left)}` : "timing out now");
  }
  if (request.next_escalation_at) {
    const left = (Date.parse(request.next_escalation_at) - now) / 1000;
    if (left > 0) parts.push(`escalates in ${inWords(left)}`);
  }
  return parts.join(" · ");
}

function progress(request) {
  const q = request.quorum || { required: 1, approvals: 0, declines: 0 };
  let text = `${q.approvals} of ${q.required} approved`;
  if (q.declines) text += `, ${q.declines} declined`;
  if (request.my_vote) text += ` — you ${request.my_vote === "approve" ? "approved" : "declined"}`;
  return text;
}

// The rule as its author wrote it in the policy (the condition text and description), not compiled CEL.
function ruleText(rule) {
  if (!rule || !rule.tool) return "policy default (no tool entry matched)";
  const when = rule.when ? `when ${rule.when}` : "always";
  return `${rule.tool} · rule ${Number(rule.index) + 1}: ${when}`;
}

function argumentsBlock(request) {
  const run = request.arguments_to_run || request.arguments || {};
  const given = request.arguments || {};
  const lines = Object.keys(run).map((key) => {
    const fill = key in given ? "" : "   (default)";
    return `${key}: ${JSON.stringify(run[key])}${fill}`;
  });
  return lines.length ? lines.join("\n") : "(no arguments)";
}


function flagsBlock(request) {
  const flags = request.red_flags || [];
  if (!flags.length) return "";
  return `<ul class="flags" aria-label="Red flags">${flags.map((f) =>
    `<li data-flag="${escapeHtml(f.code)}">⚑ ${escapeHtml(f.why)}</li>`).join("")}</ul>`;
}

function decideBlock(request) {
  if (!request.can_vote) {
    return `<p class="muted why-not">You cannot vote: ${escapeHtml(request.why_not || "not an approver")}</p>`;
  }
  const id = escapeHtml(request.id);
  const reasons = (request.approval_policy || {}).decline_reasons || [];
  const chips = reasons.length
    ? `<div class="chips" role="group" aria-label="Preset decline reasons">${reasons.map((r) =>
      `<button type="button" class="chip" data-reason="${escapeHtml(r)}" aria-pressed="false">${escapeHtml(r)}</button>`).join("")}</div>`
    : "";
  return `${chips}<label for="reason-${id}">Reason</label>
    <textarea id="reason-${id}" rows="2" name="reason" placeholder="Required to decline when the policy says so"></textarea>
    <div class="actions"><button type="button" class="approve" data-action="approve">Approve</button>
    <button type="button" class="decline" data-action="decline">Decline</button></div>`;
}

function summary(request) {
  const risk = request.risk ? `<span class="risk ${escapeHtml(request.risk)}">${escapeHtml(request.risk)}</span>` : "";
  const rule = request.rule || {};
  return `<p class="progress"><strong>${escapeHtml(progress(request))}</strong> ${risk}</p>
    <p class="muted"><span class="time-left">${escapeHtml(timeLeft(request))}</span></p>
    <p class="muted">server <span class="server">${escapeHtml(request.server || "(any)")}</span> ·
      ${escapeHtml(request.agent?.name || "agent")} · ${new Date(request.created_at).toLocaleString()}</p>
    <p class="rule"><strong>Rule:</strong> <code>${escapeHtml(ruleText(rule))}</code>
      ${rule.description ? `<br>${escapeHtml(rule.description)}` : ""}</p>
    ${flagsBlock(request)}
    ${request.justification ? `<p><strong>Why:</strong> ${escapeHtml(request.justification)}</p>` : ""}
    <p class="muted">Arguments as they will run:</p>
    <pre class="args">${escapeHtml(argumentsBlock(request))}</pre>`;
}

function card(request) {
  const id = escapeHtml(request.id);
  const passkey = (request.approval_policy || {}).require_passkey ? ' data-passkey="1"' : "";
  const select = request.can_vote
    ? `<label class="select"><input type="checkbox" class="pick" data-id="${id}"> Select</label>` : "";
  return `<article class="card" data-id="${id}"${passkey}>
    <h2><a href="#/requests/${id}">${escapeHtml(request.tool)}</a></h2>${select}
    ${summary(request)}
    ${decideBlock(request)}
    <p class="error" role="alert"></p>
  </article>`;
}

// Puts back what the person typed, picked or was told on a card that was just drawn again.
function restore(article) {
  const id = article.dataset.id;
  const textarea = article.querySelector("textarea[name=reason]");
  if (textarea && state.drafts.has(id)) textarea.value = state.drafts.get(id);
  for (const chip of article.querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", String(textarea?.value === chip.dataset.reason));
  }
  article.querySelector(".error").textContent = state.errors.get(id) || "";
  const pick = article.querySelector(".pick");
  if (pick) pick.checked = state.selected.has(id);
  preloop.hooks.afterRender.forEach((hook) => hook(article, state.items.get(id) || state.detail));
}

function render() {
  const list = [...state.items.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  const container = $("#requests");
  // Keep focus where it was (a re-render from the event stream must not throw the keyboard user out).
  const focused = document.activeElement?.closest?.("#requests article");
  const focusKey = focused && document.activeElement.dataset.action ? `[data-action=${document.activeElement.dataset.action}]`
    : focused && document.activeElement.tagName === "TEXTAREA" ? "textarea" : null;
  const focusId = focused?.dataset.id;
  const caret = focusKey === "textarea" ? document.activeElement.selectionStart : null;
  container.innerHTML = list.map(card).join("");
  for (const article of container.querySelectorAll("article")) restore(article);
  if (focusId && focusKey) {
    const again = container.querySelector(`article[data-id="${CSS.escape(focusId)}"] ${focusKey}`);
    again?.focus();
    if (again && caret !== null) again.setSelectionRange(caret, caret);
  }
  for (const id of [...state.selected]) if (!state.items.has(id)) state.selected.delete(id);
  updateBatch();
  $("#empty").hidden = list.length > 0;
  $("#empty").textContent = state.view === "mine" ? "Nothing is waiting for your decision." : "Nothing is pending.";
  $("#inbox-title").textContent = state.view === "mine" ? "Waiting for you" : "All pending";
  $("#tab-mine").setAttribute("aria-pressed", String(state.view === "mine"));
  $("#tab-all").setAttribute("aria-pressed", String(state.view === "all"));
}

async function refresh() {
  const scope = state.view === "mine" ? "mine" : "all";
  const pending = await api(`/api/v1/approvals?status=pending&scope=${scope}`);
  state.items = new Map(pending.map((item) => [item.id, item]));
  render();
  if (state.detail && !$("#detail").hidden) await showDetail(state.detail.id, null, true).catch(() => {});
}
preloop.refresh = refresh;

function notice(text) {
  const box = $("#notice");
  box.textContent = text;
  box.hidden = !text;
}

// --- the views ------------------------------------------------------------------------------

const VIEWS = ["inbox", "detail", "history", "settings"];
function show(view) {
  for (const name of VIEWS) $(`#${name}`).hidden = name !== view;
  for (const [link, name] of [["#nav-inbox", "inbox"], ["#nav-history", "history"], ["#nav-settings", "settings"]]) {
    if (name === view) $(link).setAttribute("aria-current", "page");
    else $(link).removeAttribute("aria-current");
  }
}

async function route() {
  if (!state.me) return;
  const hash = location.hash;
  // From a notification or an email; ?action=approve comes from a notification's Approve button.
  const opened = hash.match(/^#\/requests\/([\w-]+)(?:\?action=(approve|decline))?$/);
  if (opened) return showDetail(opened[1], opened[2] || null);
  state.detail = null;
  if (hash === "#/history") { show("history"); return showHistory(); }
  if (hash === "#/settings") { show("settings"); return showSettings(); }
  show("inbox");
  return refresh();
}
window.addEventListener("hashchange", () => {
  if (inviteToken()) showInvite(); // an invite link opened in a tab that already has the app
  else route().catch((error) => notice(error.message));
});

function votesBlock(request) {
  const votes = request.votes || [];
  if (!votes.length) return `<p class="muted">No votes yet.</p>`;
  return `<ul class="plain votes">${votes.map((v) => `<li>${escapeHtml(v.user?.email || "someone")}
    <strong>${v.decision === "approve" ? "approved" : "declined"}</strong> via ${escapeHtml(v.channel)}
    ${v.passkey_confirmed ? "· passkey" : ""} · ${new Date(v.created_at).toLocaleString()}
    ${v.reason ? `<br>“${escapeHtml(v.reason)}”` : ""}</li>`).join("")}</ul>`;
}

function deliveriesBlock(deliveries) {
  if (!deliveries) return `<p class="muted">Notifications are not visible to you.</p>`;
  if (!deliveries.length) return `<p class="muted">No notifications sent.</p>`;
  return `<ul class="plain deliveries">${deliveries.map((d) => `<li data-channel="${escapeHtml(d.channel)}">
    ${escapeHtml(d.channel)} to ${escapeHtml(d.email)}: ${escapeHtml(d.status)}
    ${d.sent_at ? `at ${new Date(d.sent_at).toLocaleTimeString()}` : ""}${d.last_error ? ` (${escapeHtml(d.last_error)})` : ""}</li>`).join("")}</ul>`;
}

// The request's discussion: its chat thread's replies and comments written in Preloop, as plain text.
function commentsBlock(comments) {
  if (!comments) return `<p class="muted">The discussion is not visible to you.</p>`;
  if (!comments.length) return `<p class="muted no-comments">No discussion yet.</p>`;
  return `<ol class="plain comments">${comments.map((c) => `<li data-comment="${escapeHtml(c.id)}" data-source="${escapeHtml(c.source)}">
    <strong>${escapeHtml(c.author)}</strong> <span class="muted">via ${escapeHtml(c.source)} · ${new Date(c.created_at).toLocaleString()}</span>
    <p class="comment-text">${escapeHtml(c.text)}</p></li>`).join("")}</ol>`;
}

function commentForm(id) {
  if (state.me?.user?.role === "viewer") return `<p class="muted">Viewers read the discussion; approvers and admins write in it.</p>`;
  return `<form class="comment-form" novalidate>
    <label for="comment-${id}">Add a comment</label>
    <textarea id="comment-${id}" name="comment" rows="2" maxlength="4000"></textarea>
    <div class="actions"><button type="submit" class="secondary">Post comment</button></div>
    <p class="comment-error error" role="alert"></p></form>`;
}

// Someone commented (the event stream says so): the open detail of that request fetches the discussion.
async function refreshComments(id) {
  const box = $("#detail-body .comments-box");
  if (!box || $("#detail").hidden || $("#detail-body article")?.dataset.id !== id) return;
  box.innerHTML = commentsBlock(await api(`/api/v1/approvals/${id}/comments`).catch(() => null));
}
preloop.refreshComments = refreshComments;

async function postComment(form) {
  const article = form.closest("article");
  const textarea = form.querySelector("textarea");
  const error = form.querySelector(".comment-error");
  error.textContent = "";
  const text = textarea.value.trim();
  if (!text) { error.textContent = "Write a comment first."; textarea.focus(); return; }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    await api(`/api/v1/approvals/${article.dataset.id}/comments`, { method: "POST", body: JSON.stringify({ text }) });
    textarea.value = "";
    await refreshComments(article.dataset.id);
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    button.disabled = false;
  }
}

// The full request: everything on the card, plus requester and owner, votes and notifications sent.
// `intent` (approve/decline, from a notification's button) puts that decision one tap away.
async function showDetail(id, intent, quiet = false) {
  show("detail");
  const [request, deliveries, comments] = await Promise.all([
    api(`/api/v1/approvals/${id}`),
    api(`/api/v1/approvals/${id}/deliveries`).catch(() => null),
    api(`/api/v1/approvals/${id}/comments`).catch(() => null),
  ]);
  const pending = state.items.get(id);
  const merged = { ...request, can_vote: pending?.can_vote ?? false, why_not: pending ? pending.why_not
    : request.status === "pending" ? "not an approver of this request" : `it is ${request.status}`, my_vote: pending?.my_vote };
  state.detail = merged;
  const passkey = (request.approval_policy || {}).require_passkey ? ' data-passkey="1"' : "";
  const requester = request.requester?.email ? `requested by ${escapeHtml(request.requester.email)} through ` : "";
  const confirm = intent && merged.can_vote
    ? `<p class="intent">You chose <strong>${intent}</strong> in the notification.</p>
       <button type="button" id="confirm-intent" class="${intent}" data-action="${intent}">Confirm ${intent}</button>` : "";
  const keep = $("#detail-body article")?.dataset.id === id;
  if (quiet && keep && state.items.get(id)) {
    // A live update: refresh the changing parts only, keep the draft and the focus.
    $("#detail-body .votes-box").innerHTML = votesBlock(request);
    $("#detail-body .progress").innerHTML = `<strong>${escapeHtml(progress(merged))}</strong>`;
    $("#detail-body .comments-box").innerHTML = commentsBlock(comments);
    return;
  }
  $("#detail-body").innerHTML = `<article class="card detail" data-id="${escapeHtml(id)}"${passkey}>
    <h1 tabindex="-1">${escapeHtml(request.tool)} <span class="status">${escapeHtml(request.status)}</span></h1>
    <p>${requester}agent <strong>${escapeHtml(request.agent?.name || "agent")}</strong></p>
    ${summary(merged)}
    ${request.status === "pending" ? confirm + decideBlock(merged) : ""}
    <p class="error" role="alert"></p>
    <h2>Votes</h2><div class="votes-box">${votesBlock(request)}</div>
    ${request.outcome ? `<h2>Outcome</h2><p class="outcome">${escapeHtml(request.outcome.kind || request.status)}${request.outcome.reason ? `: ${escapeHtml(request.outcome.reason)}` : ""}</p>` : ""}
    <h2>Discussion</h2><div class="comments-box" aria-live="polite">${commentsBlock(comments)}</div>
    ${commentForm(escapeHtml(id))}
    <h2>Notifications sent</h2>${deliveriesBlock(deliveries)}
  </article>`;
  const article = $("#detail-body article");
  restore(article);
  ($("#confirm-intent") || $("#detail-body h1")).focus?.();
  // Tapped Approve on the notification of a passkey request: ask for the passkey straight away (the
  // second and last interaction); if the browser wants a tap first, "Confirm" stays on screen.
  if (intent && merged.can_vote && article.dataset.passkey && !quiet) {
    history.replaceState(null, "", `#/requests/${id}`);
    await decide(article, intent);
  }
}

async function showHistory() {
  const mine = await api(`/api/v1/approvals?approver=${encodeURIComponent(state.me.user.email)}&limit=100`);
  $("#history-list").innerHTML = mine.map((r) => {
    const vote = (r.votes || []).find((v) => v.user?.email === state.me.user.email);
    return `<li><a href="#/requests/${escapeHtml(r.id)}">${escapeHtml(r.tool)}</a>
      you ${vote?.decision === "approve" ? "approved" : "declined"} · now ${escapeHtml(r.status)}
      <span class="muted">${new Date(vote?.created_at || r.created_at).toLocaleString()}</span>
      ${vote?.reason ? `<br><span class="muted">“${escapeHtml(vote.reason)}”</span>` : ""}</li>`;
  }).join("") || `<li class="muted">You have not decided anything yet.</li>`;
}

async function showSettings() {
  const prefs = await api("/api/v1/me/notifications");
  const form = $("#prefs-form");
  for (const box of form.querySelectorAll("input[name=channel]")) {
    box.checked = prefs.channels === null || prefs.channels === undefined || prefs.channels.includes(box.value);
  }
  form.elements.quiet_start.value = prefs.quiet_hours?.start || "";
  form.elements.quiet_end.value = prefs.quiet_hours?.end || "";
  form.elements.timezone.value = prefs.timezone || "UTC";
}

$("#prefs-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const channels = [...form.querySelectorAll("input[name=channel]:checked")].map((box) => box.value);
  const start = form.elements.quiet_start.value;
  const end = form.elements.quiet_end.value;
  try {
    if (Boolean(start) !== Boolean(end)) throw new Error("Quiet hours need both a start and an end time.");
    await api("/api/v1/me/notifications", { method: "PUT", body: JSON.stringify({
      channels: ["web", "webhook", ...channels], quiet_hours: start ? { start, end } : null,
      timezone: form.elements.timezone.value.trim() || "UTC" }) });
    $("#prefs-status").textContent = "Saved.";
  } catch (error) {
    $("#prefs-status").textContent = error.message;
  }
});

// --- deciding ---------------------------------------------------------------------------------

function setError(article, id, text) {
  if (text) state.errors.set(id, text);
  else state.errors.delete(id);
  article.querySelector(".error").textContent = text;
}

async function decide(article, action) {
  const id = article.dataset.id;
  const request = state.items.get(id) || state.detail;
  const reason = article.querySelector("textarea[name=reason]")?.value.trim() || null;
  setError(article, id, "");
  try {
    // The step-up comes first: iOS drops the tap's gesture if anything is awaited before it.
    const stepUp = window.preloopPasskeys ? await window.preloopPasskeys.stepUpFor(article, action) : {};
    let body = { reason, ...stepUp };
    for (const hook of preloop.hooks.beforeDecide) body = (await hook(request, action, body)) || body;
    const result = await api(`/api/v1/approvals/${id}/${action}`, { method: "POST", body: JSON.stringify(body) });
    state.drafts.delete(id);
    state.selected.delete(id);
    const done = action === "approve" ? "Approved" : "Declined";
    const outcome = result?.status && result.status !== "pending" ? `request ${result.status}` : progress({ ...result, my_vote: action });
    notice(`${done} ${request?.tool || "the request"}: ${outcome}.`);
    if (!$("#detail").hidden) location.hash = "#/";
    else await refresh();
  } catch (error) {
    const live = document.querySelector(`article[data-id="${CSS.escape(id)}"]`) || article;
    setError(live, id, error.message);
  }
}

function updateBatch() {
  const count = state.selected.size;
  $("#batch").hidden = count === 0;
  $("#batch-count").textContent = `${count} selected`;
  $("#batch-approve").textContent = `Approve ${count}`;
  $("#batch-decline").textContent = `Decline ${count}`;
}

// Several requests decided together; with passkeys required, one assertion covers all of them.
async function decideBatch(decision) {
  const ids = [...state.selected];
  $("#batch-error").textContent = "";
  try {
    const needsPasskey = ids.some((id) => (state.items.get(id)?.approval_policy || {}).require_passkey);
    const assertion = needsPasskey ? await window.preloopPasskeys.stepUp(ids, decision) : undefined;
    const reasons = new Set(ids.map((id) => state.drafts.get(id)).filter(Boolean));
    const reason = reasons.size === 1 ? [...reasons][0] : null;
    const result = await api("/api/v1/approvals/batch", { method: "POST",
      body: JSON.stringify({ ids, decision, reason, assertion }) });
    for (const r of result.results) {
      if (r.ok) { state.selected.delete(r.id); state.drafts.delete(r.id); }
      else state.errors.set(r.id, r.error?.message || "not recorded");
    }
    notice(`${decision === "approve" ? "Approved" : "Declined"} ${result.ok} of ${ids.length}.`);
    if (result.failed) $("#batch-error").textContent = `${result.failed} not recorded: see their cards.`;
    await refresh();
  } catch (error) {
    $("#batch-error").textContent = error.message;
  }
}
$("#batch-approve").addEventListener("click", () => decideBatch("approve"));
$("#batch-decline").addEventListener("click", () => decideBatch("decline"));

function showSignedOut(message = "") {
  state.events?.close();
  state.events = null;
  state.me = null;
  state.view = "mine"; // the next person starts from their own inbox
  for (const kept of [state.items, state.drafts, state.errors, state.selected]) kept.clear();
  navigator.serviceWorker?.controller?.postMessage({ forget: true }); // the cached inbox is this person's
  $("#requests").innerHTML = "";
  $("#who").textContent = "";
  $("#signout").hidden = true;
  $("#nav").hidden = true;
  for (const name of [...VIEWS, "invite", "enrol"]) $(`#${name}`).hidden = true;
  $("#login").hidden = false;
  $("#login-note").textContent = message;
}

async function start() {
  try {
    const me = await api("/api/v1/me");
    state.me = me;
    $("#who").textContent = me.user.email;
    $("#signout").hidden = false;
    $("#nav").hidden = false;
    $("#login").hidden = true;
    $("#invite").hidden = true;
    $("#enrol").hidden = true;
    await route();
    state.events?.close();
    state.events = new EventSource("/api/v1/events");
    state.events.onmessage = () => refresh();
    state.events.onopen = () => showOffline(false);
    const kinds = ["requested", "escalated", "approved", "declined", "expired", "cancelled", "executing", "executed", "failed", "voted"];
    kinds.forEach((kind) => state.events.addEventListener(`approval.${kind}`, () => refresh().catch(() => {})));
    state.events.addEventListener("approval.commented", (event) => {
      let id = null;
      try { id = JSON.parse(event.data).request_id; } catch { return; }
      refreshComments(id).catch(() => {});
    });
    preloop.hooks.afterSignIn.forEach((hook) => hook(me));
  } catch {
    if (!state.me) showSignedOut();
  }
}
window.start = start;

// --- sign in, sign out, invite links ------------------------------------------------------

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api("/api/v1/auth/login", {
      method: "POST",
      body: JSON.stringify({ email: form.get("email"), password: form.get("password"),
                             totp_code: form.get("totp_code") || undefined }),
    });
    $("#login-note").textContent = "";
    await start();
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
});
$("#login-form").addEventListener("input", () => { $("#login-error").textContent = ""; });

async function signOut() {
  await api("/api/v1/auth/logout", { method: "POST" }).catch(() => null);
  notice("");
  history.replaceState(null, "", location.pathname);
  showSignedOut("You are signed out.");
}
$("#signout").addEventListener("click", signOut);
$("#settings-signout").addEventListener("click", signOut);

function inviteToken() {
  const match = location.hash.match(/^#invite=([\w-]+)$/);
  return match ? match[1] : null;
}

$("#invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  if (form.get("password") !== form.get("confirm")) {
    $("#invite-error").textContent = "The two passwords differ.";
    return;
  }
  try {
    const done = await api("/api/v1/auth/invite", {
      method: "POST",
      body: JSON.stringify({ token: inviteToken(), password: form.get("password") }),
    });
    history.replaceState(null, "", location.pathname);
    // Signed in with the new password at once, then offered a passkey for this device.
    await api("/api/v1/auth/login", { method: "POST",
      body: JSON.stringify({ email: done.email, password: form.get("password") }) });
    $("#invite").hidden = true;
    $("#enrol").hidden = false;
    $("#enrol-name").focus();
  } catch (error) {
    $("#invite-error").textContent = error.message;
  }
});
$("#invite-form").addEventListener("input", () => { $("#invite-error").textContent = ""; });

// --- the inbox ----------------------------------------------------------------------------

$("#enrol-add").addEventListener("click", async () => {
  try {
    await window.preloopPasskeys.enrol($("#enrol-name").value.trim() || "Passkey");
    $("#enrol-status").textContent = "Passkey added.";
    await start();
  } catch (error) {
    $("#enrol-status").textContent = `Could not add a passkey: ${error.message}`;
  }
});
$("#enrol-skip").addEventListener("click", () => start());

for (const root of ["#requests", "#detail-body"]) {
  $(root).addEventListener("click", (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    const article = target.closest("article");
    if (target.dataset.action) decide(article, target.dataset.action);
    if (target.dataset.reason !== undefined) { // a preset reason chip fills the reason
      const textarea = article.querySelector("textarea[name=reason]");
      textarea.value = target.dataset.reason;
      state.drafts.set(article.dataset.id, textarea.value);
      for (const chip of article.querySelectorAll(".chip")) chip.setAttribute("aria-pressed", String(chip === target));
    }
  });
  $(root).addEventListener("input", (event) => {
    const article = event.target.closest("article");
    if (!article || event.target.closest(".comment-form")) return; // a comment is not a reason
    if (event.target.classList.contains("pick")) {
      if (event.target.checked) state.selected.add(article.dataset.id);
      else state.selected.delete(article.dataset.id);
      updateBatch();
      return;
    }
    setError(article, article.dataset.id, "");
    state.drafts.set(article.dataset.id, event.target.value);
  });
}
$("#detail-body").addEventListener("submit", (event) => {
  if (!event.target.matches(".comment-form")) return;
  event.preventDefault();
  postComment(event.target);
});
for (const [button, view] of [["#tab-mine", "mine"], ["#tab-all", "all"]]) {
  $(button).addEventListener("click", () => {
    state.view = view;
    notice("");
    state.selected.clear();
    refresh().catch((error) => notice(error.message));
  });
}
setInterval(() => { // the deadline countdown, from the absolute times
  for (const article of document.querySelectorAll("#requests article, #detail-body article")) {
    const request = state.items.get(article.dataset.id) || state.detail;
    const box = article.querySelector(".time-left");
    if (request && box) box.textContent = timeLeft(request);
  }
}, 5000);
window.addEventListener("online", () => state.me && refresh().catch(() => {}));

if ("serviceWorker" in navigator) navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
function showInvite() {
  for (const name of [...VIEWS, "login", "enrol"]) $(`#${name}`).hidden = true;
  $("#invite").hidden = false;
}
if (inviteToken()) {
  showInvite();
} else {
  start();
}
