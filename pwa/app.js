// The approver app: sign in, see pending requests live, approve or decline with a reason.
const $ = (selector) => document.querySelector(selector);

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

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function card(request) {
  const risk = request.risk ? `<span class="risk ${escapeHtml(request.risk)}">${escapeHtml(request.risk)}</span>` : "";
  const policy = request.approval_policy || {};
  return `<article class="card" data-id="${escapeHtml(request.id)}">
    <h2>${escapeHtml(request.tool)} ${risk}</h2>
    <p class="muted">${escapeHtml(request.agent?.name || "agent")} · ${new Date(request.created_at).toLocaleString()}
      · needs ${escapeHtml(policy.quorum || 1)} approval(s)</p>
    <p>${escapeHtml(request.reason || "")}</p>
    ${request.justification ? `<p><strong>Why:</strong> ${escapeHtml(request.justification)}</p>` : ""}
    <pre>${escapeHtml(JSON.stringify(request.arguments, null, 2))}</pre>
    <label>Reason <textarea rows="2" name="reason" placeholder="Required to decline when the policy says so"></textarea></label>
    <button class="approve" data-action="approve">Approve</button>
    <button class="decline" data-action="decline">Decline</button>
    <p class="error" role="alert"></p>
  </article>`;
}

async function refresh() {
  const pending = await api("/api/v1/approvals?status=pending");
  $("#requests").innerHTML = pending.map(card).join("");
  $("#empty").hidden = pending.length > 0;
  const opened = location.hash.match(/^#\/requests\/([\w-]+)/); // from a notification or an email
  document.querySelector(`article[data-id="${opened?.[1]}"]`)?.scrollIntoView();
}
window.addEventListener("hashchange", () => refresh());

async function decide(article, action) {
  const reason = article.querySelector("textarea").value.trim() || null;
  try {
    await api(`/api/v1/approvals/${article.dataset.id}/${action}`, {
      method: "POST",
      body: JSON.stringify({ reason, channel: "mobile" }),
    });
    await refresh();
  } catch (error) {
    article.querySelector(".error").textContent = error.message;
  }
}

async function start() {
  try {
    const me = await api("/api/v1/me");
    $("#who").textContent = me.user.email;
    $("#login").hidden = true;
    $("#inbox").hidden = false;
    await refresh();
    const events = new EventSource("/api/v1/events");
    events.onmessage = () => refresh();
    const kinds = ["requested", "escalated", "approved", "declined", "expired", "cancelled", "executing", "executed", "failed"];
    kinds.forEach((kind) => events.addEventListener(`approval.${kind}`, () => refresh()));
  } catch {
    $("#login").hidden = false;
    $("#inbox").hidden = true;
  }
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api("/api/v1/auth/login", {
      method: "POST",
      body: JSON.stringify({ email: form.get("email"), password: form.get("password") }),
    });
    await start();
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
});

$("#requests").addEventListener("click", (event) => {
  const action = event.target.dataset?.action;
  if (action) decide(event.target.closest("article"), action);
});

if ("serviceWorker" in navigator) navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
start();
