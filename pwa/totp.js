// Two-step codes (TOTP) in the approver app: turn them on in Settings with the QR code the hub
// draws, keep the recovery codes, and type a code at password sign-in.
(() => {
  const $ = (selector) => document.querySelector(selector);

  async function call(path, method = "GET", body = undefined) {
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

  // The sign-in form gets a code field; app.js sends it as totp_code when filled.
  const field = document.createElement("label");
  field.innerHTML = `Two-step code (if you turned it on)
    <input name="totp_code" inputmode="numeric" autocomplete="one-time-code" maxlength="20">`;
  $("#login-form button[type=submit]").before(field);

  const section = document.createElement("details");
  section.id = "totp";
  section.innerHTML = `<summary>Settings · Two-step codes</summary>
    <p id="totp-state" class="muted"></p>
    <button id="totp-start" type="button">Turn on two-step codes</button>
    <div id="totp-setup" hidden>
      <p>Scan this with an authenticator app, or type the key.</p>
      <div id="totp-qr"></div>
      <p>Key: <code id="totp-secret"></code></p>
      <label>Code from the app <input id="totp-code" inputmode="numeric" autocomplete="one-time-code"></label>
      <button id="totp-confirm" class="approve" type="button">Confirm</button>
    </div>
    <div id="totp-recovery" hidden>
      <p>Recovery codes: each works once if you lose the device. They are shown only now.</p>
      <pre id="totp-recovery-codes"></pre>
    </div>
    <p id="totp-status" class="error" role="status"></p>`;

  async function showState() {
    const state = await call("/api/v1/totp");
    $("#totp-state").textContent = state.enrolled
      ? `On. ${state.recovery_codes_left} recovery codes left.`
      : "Off.";
    $("#totp-start").hidden = state.enrolled;
  }

  section.addEventListener("toggle", () => section.open && showState().catch(() => {}));
  section.addEventListener("click", async (event) => {
    try {
      if (event.target.id === "totp-start") {
        const setup = await call("/api/v1/totp/enrol", "POST");
        $("#totp-qr").innerHTML = setup.qr_svg; // drawn by the hub, not by a third party
        $("#totp-secret").textContent = setup.secret;
        $("#totp-setup").hidden = false;
      } else if (event.target.id === "totp-confirm") {
        const result = await call("/api/v1/totp/confirm", "POST", { code: $("#totp-code").value.trim() });
        $("#totp-setup").hidden = true;
        $("#totp-recovery").hidden = false;
        $("#totp-recovery-codes").textContent = result.recovery_codes.join("\n");
        await showState();
      } else {
        return;
      }
      $("#totp-status").textContent = "";
    } catch (error) {
      $("#totp-status").textContent = error.message;
    }
  });
  $("#settings-more").append(section);
})();
