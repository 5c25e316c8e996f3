// Passkeys in the console: sign in with one, and confirm a vote with one when the request's
// policy requires it. The WebAuthn plumbing follows pwa/passkeys.js and calls the same endpoints
// (/api/v1/webauthn/authenticate/*, /api/v1/approvals/{id}/step-up/options).
(function () {
  "use strict";

  function bytes(value) {
    var b64 = value.replace(/-/g, "+").replace(/_/g, "/");
    b64 += "=".repeat((4 - (b64.length % 4)) % 4);
    return Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); }).buffer;
  }
  function b64url(buffer) {
    return btoa(String.fromCharCode.apply(null, new Uint8Array(buffer)))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function requestOptions(o) {
    var out = Object.assign({}, o);
    out.challenge = bytes(o.challenge);
    out.allowCredentials = (o.allowCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: bytes(c.id) });
    });
    return out;
  }
  function assertionJSON(credential) {
    var r = credential.response;
    var response = { clientDataJSON: b64url(r.clientDataJSON), authenticatorData: b64url(r.authenticatorData),
                     signature: b64url(r.signature) };
    if (r.userHandle) response.userHandle = b64url(r.userHandle);
    return { id: credential.id, rawId: b64url(credential.rawId), type: credential.type, response: response,
             clientExtensionResults: credential.getClientExtensionResults() };
  }
  function csrfHeaders() {
    var headers = { "Content-Type": "application/json" };
    try {
      var token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];
      if (token) headers["X-CSRF-Token"] = token;
    } catch (e) { /* the sign-in page has no session yet */ }
    return headers;
  }
  function call(path, body) {
    return fetch(path, { method: "POST", credentials: "same-origin", headers: csrfHeaders(),
                         body: JSON.stringify(body || {}) })
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (data) {
          if (!response.ok) throw new Error((data && data.error && data.error.message) || "HTTP " + response.status);
          return data;
        });
      });
  }
  function assert(options) {
    return navigator.credentials.get({ publicKey: requestOptions(options.public_key) }).then(assertionJSON);
  }

  // Sign-in page: "Sign in with a passkey" starts a session (cookie) and goes on to `next`.
  function setupSignIn() {
    var button = document.getElementById("passkey-signin");
    if (!button) return;
    if (!window.PublicKeyCredential) { button.hidden = true; return; }
    var error = document.getElementById("passkey-error");
    button.addEventListener("click", function () {
      error.textContent = "";
      call("/api/v1/webauthn/authenticate/options")
        .then(assert)
        .then(function (credential) { return call("/api/v1/webauthn/authenticate/verify", { credential: credential }); })
        .then(function () { window.location.assign(button.getAttribute("data-next") || "/console/approvals"); })
        .catch(function (e) { error.textContent = "Passkey sign-in failed: " + e.message; });
    });
  }

  // Detail page: a vote on a `require_passkey` request first asks the authenticator; the hub binds
  // the challenge to this request, the decision and the arguments' hash.
  function setupStepUp() {
    var form = document.querySelector("form[data-step-up]");
    if (!form) return;
    var status = document.getElementById("step-up-status");
    form.addEventListener("submit", function (event) {
      var field = form.querySelector("input[name=assertion]");
      if (field.value) return;  // the assertion is in: let the form go
      event.preventDefault();
      var decision = event.submitter ? event.submitter.value : "approve";
      status.textContent = "Confirm the " + decision + " with your passkey…";
      call("/api/v1/approvals/" + form.getAttribute("data-step-up") + "/step-up/options", { decision: decision })
        .then(assert)
        .then(function (credential) {
          field.value = JSON.stringify(credential);
          form.querySelector("input[name=step_up_decision]").value = decision;
          status.textContent = "Passkey confirmed; sending the " + decision + ".";
          form.submit();
        })
        .catch(function (e) { status.textContent = "Not sent: the passkey check failed (" + e.message + ")."; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { setupSignIn(); setupStepUp(); });
})();
