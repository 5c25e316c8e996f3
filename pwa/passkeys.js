// Passkeys in the approver app: add them in Settings, sign in with one, and confirm a decision
// with one when the request's policy requires it (the hub binds that confirmation to the request,
// the decision and the exact arguments).
(() => {
  const $ = (selector) => document.querySelector(selector);
  const bytes = (text) => {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0)).buffer;
  };
  const text = (buffer) =>
    btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const escapeHtml = (value) =>
    String(value).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  async function call(path, method = "POST", body = undefined) {
    const response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new Error(data?.error?.message || `HTTP ${response.status}`);
    return data;
  }

  const creationOptions = (o) => ({
    ...o,
    challenge: bytes(o.challenge),
    user: { ...o.user, id: bytes(o.user.id) },
    excludeCredentials: (o.excludeCredentials || []).map((c) => ({ ...c, id: bytes(c.id) })),
  });
  const requestOptions = (o) => ({
    ...o,
    challenge: bytes(o.challenge),
    allowCredentials: (o.allowCredentials || []).map((c) => ({ ...c, id: bytes(c.id) })),
  });

  function credentialJSON(credential) {
    const r = credential.response;
    const response = { clientDataJSON: text(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = text(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = text(r.authenticatorData);
      response.signature = text(r.signature);
      if (r.userHandle) response.userHandle = text(r.userHandle);
    }
    return { id: credential.id, rawId: text(credential.rawId), type: credential.type, response,
             clientExtensionResults: credential.getClientExtensionResults() };
  }

  async function enrol(name) {
    const { public_key: options } = await call("/api/v1/webauthn/register/options");
    const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
    return call("/api/v1/webauthn/register/verify", "POST", { credential: credentialJSON(credential), name });
  }

  async function signIn() {
    const { public_key: options } = await call("/api/v1/webauthn/authenticate/options");
    const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
    return call("/api/v1/webauthn/authenticate/verify", "POST", { credential: credentialJSON(credential) });
  }

  // One assertion for one request or, in a batch, for all the listed ones.
  async function stepUp(ids, decision) {
    const options = ids.length === 1
      ? await call(`/api/v1/approvals/${ids[0]}/step-up/options`, "POST", { decision })
      : await call("/api/v1/approvals/batch/step-up/options", "POST", { ids, decision });
    const credential = await navigator.credentials.get({ publicKey: requestOptions(options.public_key) });
    return credentialJSON(credential);
  }

  // Step-up challenges are fetched ahead for the cards on screen, so a tap on Approve or Decline
  // reaches navigator.credentials.get with no network wait in between (iOS drops the gesture
  // otherwise). The hub keeps each for 120 s and accepts it once; older ones are fetched again.
  const FRESH_MS = 90_000;
  const ready = new Map();

  // Marks a card whose two challenges are at hand (data-step-up-ready), for styling and tests.
  function mark(id) {
    const article = document.querySelector(`article[data-id="${CSS.escape(id)}"]`);
    const both = ["approve", "decline"].every((d) => ready.get(`${id}:${d}`)?.value);
    if (article && both) article.dataset.stepUpReady = "1";
  }

  function prepare() {
    for (const article of document.querySelectorAll("article[data-passkey]")) {
      const id = article.dataset.id;
      for (const decision of ["approve", "decline"]) {
        const key = `${id}:${decision}`;
        if (ready.has(key) && Date.now() - ready.get(key).at < FRESH_MS) continue;
        const entry = { at: Date.now(), value: null };
        ready.set(key, entry);
        call(`/api/v1/approvals/${id}/step-up/options`, "POST", { decision })
          .then((options) => { entry.value = options; mark(id); }, () => ready.delete(key));
      }
      mark(id);
    }
  }

  // For app.js: the extra vote fields of a card whose policy requires a passkey ({} otherwise).
  async function stepUpFor(article, decision) {
    if (!article.dataset.passkey) return {};
    const key = `${article.dataset.id}:${decision}`;
    const entry = ready.get(key);
    ready.delete(key);
    if (!entry?.value || Date.now() - entry.at >= FRESH_MS) {
      return { channel: "app", assertion: await stepUp([article.dataset.id], decision) };
    }
    const credential = await navigator.credentials.get({ publicKey: requestOptions(entry.value.public_key) });
    return { channel: "app", assertion: credentialJSON(credential) };
  }

  // --- Settings → Passkeys ---------------------------------------------------------------------
  const settings = document.createElement("details");
  settings.id = "passkeys";
  settings.innerHTML = `<summary>Settings · Passkeys</summary>
    <ul id="passkey-list"></ul>
    <label>Name for a new passkey <input id="passkey-name" value="This device" maxlength="100"></label>
    <button id="passkey-add" class="approve" type="button">Add a passkey</button>
    <p id="passkey-status" role="status"></p>`;

  async function showList() {
    const items = await call("/api/v1/webauthn/credentials", "GET");
    $("#passkey-list").innerHTML = items.map((p) => `<li data-passkey-id="${escapeHtml(p.id)}">
      <span class="passkey-name">${escapeHtml(p.name)}</span>
      <span class="muted">${p.last_used_at ? `last used ${new Date(p.last_used_at).toLocaleString()}` : "not used yet"}</span>
      <button type="button" data-passkey-action="rename">Rename</button>
      <button type="button" data-passkey-action="remove">Remove</button></li>`).join("")
      || `<li class="muted">No passkeys yet.</li>`;
  }

  async function settingsClick(event) {
    const status = $("#passkey-status");
    try {
      if (event.target.id === "passkey-add") {
        await enrol($("#passkey-name").value.trim() || "Passkey");
        status.textContent = "Passkey added.";
      } else if (event.target.dataset.passkeyAction) {
        const id = event.target.closest("li").dataset.passkeyId;
        if (event.target.dataset.passkeyAction === "remove") {
          await call(`/api/v1/webauthn/credentials/${id}`, "DELETE");
          status.textContent = "Passkey removed.";
        } else {
          await call(`/api/v1/webauthn/credentials/${id}`, "PATCH", { name: $("#passkey-name").value.trim() });
          status.textContent = "Passkey renamed.";
        }
      } else {
        return;
      }
      await showList();
    } catch (error) {
      status.textContent = error.message;
    }
  }

  function mount() {
    new MutationObserver(prepare).observe($("#requests"), { childList: true });
    setInterval(prepare, 30_000);
    $("#settings-more").append(settings);
    settings.addEventListener("toggle", () => settings.open && showList().catch(() => {}));
    settings.addEventListener("click", settingsClick);
    const button = document.createElement("button");
    button.id = "passkey-signin";
    button.type = "button";
    button.textContent = "Sign in with a passkey";
    $("#login-form").after(button);
    button.addEventListener("click", async () => {
      try {
        await signIn();
        await window.start();
      } catch (error) {
        $("#login-error").textContent = error.message;
      }
    });
  }

  mount();
  window.preloopPasskeys = { enrol, signIn, stepUp, stepUpFor };
})();
