// The approver app: sign in (or set a password from an invite link), the inbox of what I can vote on,
// "All pending", decisions with a confirmation, sign out.
// Other modules (push.js, passkeys.js) hook in through window.preloop: see `hooks` below.
const $ = (selector) => document.querySelector(selector);
const preloop = (window.preloop = window.preloop || {});
// beforeDecide(request, action, body) may change the vote's body (e.g. add a passkey assertion) or throw;
// afterRender(article, request) may add to a card; afterSignIn(me) runs once the inbox is shown.
preloop.hooks = Object.assign({ beforeDecide: [], afterRender: [], afterSignIn: [] }, preloop.hooks || {});

const state = { view: "mine", items: new Map(), drafts: new Map(), events: null };

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    ...options,
  });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
  return body;
}
preloop.api = api;

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

function card(request) {
  const risk = request.risk ? `<span class="risk ${escapeHtml(request.risk)}">${escapeHtml(request.risk)}</span>` : "";
  const policy = request.approval_policy || {};
  const passkey = policy.require_passkey ? ' data-passkey="1"' : "";
  const rule = request.rule || {};
  const decide = request.can_vote
    ? `<label>Reason <textarea rows="2" name="reason" placeholder="Required to decline when the policy says so"></textarea></label>
    <button class="approve" data-action="approve">Approve</button>
    <button class="decline" data-action="decline">Decline</button>`
    : `<p class="muted why-not">You cannot vote: ${escapeHtml(request.why_not || "not an approver")}</p>`;
  return `<article class="card" data-id="${escapeHtml(request.id)}"${passkey}>
    <h2>${escapeHtml(request.tool)} ${risk}</h2>
    <p class="progress"><strong>${escapeHtml(progress(request))}</strong></p>
    <p class="muted"><span class="time-left">${escapeHtml(timeLeft(request))}</span></p>
    <p class="muted">server <span class="server">${escapeHtml(request.server || "(any)")}</span> ·
      ${escapeHtml(request.agent?.name || "agent")} · ${new Date(request.created_at).toLocaleString()}</p>
    <p class="rule"><strong>Rule:</strong> <code>${escapeHtml(ruleText(rule))}</code>
      ${rule.description ? `<br>${escapeHtml(rule.description)}` : ""}</p>
    ${request.justification ? `<p><strong>Why:</strong> ${escapeHtml(request.justification)}</p>` : ""}
    <p class="muted">Arguments as they will run:</p>
    <pre class="args">${escapeHtml(argumentsBlock(request))}</pre>
    ${decide}
    <p class="error" role="alert"></p>
  </article>`;
}

function render() {
  const list = [...state.items.values()];
  const container = $("#requests");
  container.innerHTML = list.map(card).join("");
  for (const article of container.querySelectorAll("article")) {
    const draft = state.drafts.get(article.dataset.id);
    const textarea = article.querySelector("textarea");
    if (draft && textarea) textarea.value = draft;
    preloop.hooks.afterRender.forEach((hook) => hook(article, state.items.get(article.dataset.id)));
  }
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
  const opened = location.hash.match(/^#\/requests\/([\w-]+)/); // from a notification or an email
  document.querySelector(`article[data-id="${opened?.[1]}"]`)?.scrollIntoView();
}
preloop.refresh = refresh;

function notice(text) {
  const box = $("#notice");
  box.textContent = text;
  box.hidden = !text;
}
window.addEventListener("hashchange", () => refresh());

async function decide(article, action) {
  const id = article.dataset.id;
  const request = state.items.get(id);
  const reason = article.querySelector("textarea")?.value.trim() || null;
  article.querySelector(".error").textContent = "";
  try {
    // The step-up comes first: iOS drops the tap's gesture if anything is awaited before it.
    const stepUp = window.preloopPasskeys ? await window.preloopPasskeys.stepUpFor(article, action) : {};
    let body = { reason, ...stepUp };
    for (const hook of preloop.hooks.beforeDecide) body = (await hook(request, action, body)) || body;
    const result = await api(`/api/v1/approvals/${id}/${action}`, { method: "POST", body: JSON.stringify(body) });
    state.drafts.delete(id);
    const done = action === "approve" ? "Approved" : "Declined";
    const outcome = result?.status && result.status !== "pending" ? `request ${result.status}` : progress({ ...result, my_vote: action });
    notice(`${done} ${request?.tool || "the request"}: ${outcome}.`);
    await refresh();
  } catch (error) {
    article.querySelector(".error").textContent = error.message;
  }
}

function showSignedOut(message = "") {
  state.events?.close();
  state.events = null;
  state.view = "mine"; // the next person starts from their own inbox
  state.items.clear();
  state.drafts.clear();
  $("#requests").innerHTML = "";
  $("#who").textContent = "";
  $("#signout").hidden = true;
  $("#inbox").hidden = true;
  $("#invite").hidden = true;
  $("#login").hidden = false;
  $("#login-note").textContent = message;
}

async function start() {
  try {
    const me = await api("/api/v1/me");
    $("#who").textContent = me.user.email;
    $("#signout").hidden = false;
    $("#login").hidden = true;
    $("#invite").hidden = true;
    $("#inbox").hidden = false;
    await refresh();
    state.events?.close();
    state.events = new EventSource("/api/v1/events");
    state.events.onmessage = () => refresh();
    const kinds = ["requested", "escalated", "approved", "declined", "expired", "cancelled", "executing", "executed", "failed", "voted"];
    kinds.forEach((kind) => state.events.addEventListener(`approval.${kind}`, () => refresh()));
    preloop.hooks.afterSignIn.forEach((hook) => hook(me));
  } catch {
    showSignedOut();
  }
}

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

$("#signout").addEventListener("click", async () => {
  await api("/api/v1/auth/logout", { method: "POST" }).catch(() => null);
  notice("");
  showSignedOut("You are signed out.");
});

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
    showSignedOut(`Password set for ${done.email}. Sign in with it.`);
    $("#login-form").elements.email.value = done.email;
  } catch (error) {
    $("#invite-error").textContent = error.message;
  }
});
$("#invite-form").addEventListener("input", () => { $("#invite-error").textContent = ""; });

// --- the inbox ----------------------------------------------------------------------------

$("#requests").addEventListener("click", (event) => {
  const action = event.target.dataset?.action;
  if (action) decide(event.target.closest("article"), action);
});
$("#requests").addEventListener("input", (event) => {
  const article = event.target.closest("article");
  if (!article) return;
  article.querySelector(".error").textContent = "";
  state.drafts.set(article.dataset.id, event.target.value);
});
for (const [button, view] of [["#tab-mine", "mine"], ["#tab-all", "all"]]) {
  $(button).addEventListener("click", () => {
    state.view = view;
    notice("");
    refresh().catch((error) => notice(error.message));
  });
}
setInterval(() => {
  for (const article of document.querySelectorAll("#requests article")) {
    const request = state.items.get(article.dataset.id);
    if (request) article.querySelector(".time-left").textContent = timeLeft(request);
  }
}, 15000);

if ("serviceWorker" in navigator) navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
if (inviteToken()) {
  $("#login").hidden = true;
  $("#invite").hidden = false;
} else {
  start();
}
