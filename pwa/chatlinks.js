// Linked chat accounts in the approver app's Settings: the Slack or Mattermost accounts whose clicks count
// as my votes, each with an Unlink button, and the confirmation a one-time link from chat opens
// (#link?token=…): it names the chat account, and only the "Link this account" button links it.
(() => {
  const $ = (selector) => document.querySelector(selector);
  const preloop = (window.preloop = window.preloop || {});
  const CHATS = { slack: "Slack", mattermost: "Mattermost" };
  let pending = null; // the link token from the address, kept only in memory

  function escapeHtml(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  // app.js's fetch helper (same-origin cookie, the hub's error message on failure).
  function call(path, method = "GET", body = undefined) {
    return preloop.api(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  }

  const section = document.createElement("section");
  section.id = "chat-links";
  section.innerHTML = `<h2>Linked chat accounts</h2>
    <p class="muted">Your clicks in Slack or Mattermost count as your votes when the chat's confirmed email is
    yours, or when you linked that chat account here.</p>
    <div id="chat-link-offer" hidden>
      <p id="chat-link-question"></p>
      <button id="chat-link-confirm" class="approve" type="button">Link this account</button>
      <button id="chat-link-cancel" type="button">Cancel</button>
    </div>
    <ul id="chat-link-list"></ul>
    <p id="chat-link-status" role="status"></p>`;
  $("#settings-more").append(section);

  function say(text) {
    $("#chat-link-status").textContent = text;
  }

  function describe(link) {
    const name = link.chat_name ? `${link.chat_name} (${link.chat_user})` : link.chat_user;
    return `${CHATS[link.chat] || link.chat} account ${name} in workspace ${link.team || "(none)"}`;
  }

  async function showLinks() {
    const links = await call("/api/v1/me/chat-links");
    $("#chat-link-list").innerHTML = links.map((link) => `<li>${escapeHtml(describe(link))}
      <button type="button" class="link" data-unlink="${escapeHtml(link.id)}">Unlink</button></li>`).join("")
      || `<li class="muted">No linked chat accounts.</li>`;
  }

  async function offer() {
    if (!pending) return;
    try {
      const shown = await call("/api/v1/me/chat-links/preview", "POST", { token: pending });
      $("#chat-link-question").textContent = `Link the ${describe(shown)} to ${shown.user}? Its clicks will count `
        + "as your votes. Only continue if this chat account is your own.";
      $("#chat-link-offer").hidden = false;
      say("");
    } catch (error) {
      pending = null;
      $("#chat-link-offer").hidden = true;
      say(error.message);
    }
  }

  // The token leaves the address at once (no history entry, no bookmark keeps it); Settings shows the offer.
  function takeToken(replacement) {
    const match = location.hash.match(/^#link\?token=([\w-]+)$/);
    if (!match) return false;
    pending = match[1];
    history.replaceState(null, "", `${location.pathname}${replacement}`);
    return true;
  }

  section.addEventListener("click", async (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    try {
      if (target.id === "chat-link-confirm") {
        const linked = await call("/api/v1/me/chat-links", "POST", { token: pending });
        pending = null;
        $("#chat-link-offer").hidden = true;
        say(`Linked: ${describe(linked)}.`);
      } else if (target.id === "chat-link-cancel") {
        pending = null;
        $("#chat-link-offer").hidden = true;
        say("Nothing was linked.");
      } else if (target.dataset.unlink) {
        await call(`/api/v1/me/chat-links/${encodeURIComponent(target.dataset.unlink)}`, "DELETE");
        say("Unlinked.");
      } else {
        return;
      }
      await showLinks();
    } catch (error) {
      if (target.id === "chat-link-confirm") { pending = null; $("#chat-link-offer").hidden = true; }
      say(error.message);
    }
  });

  takeToken("#/settings"); // before the app routes: it then opens Settings
  preloop.hooks = preloop.hooks || { beforeDecide: [], afterRender: [], afterSignIn: [] };
  preloop.hooks.afterSignIn.push(() => { showLinks().catch(() => {}); offer(); });
  window.addEventListener("hashchange", () => {
    if (takeToken("#/")) {
      location.hash = "#/settings"; // a link opened in a tab that already has the app: to Settings
      offer();
    }
    if (location.hash === "#/settings") showLinks().catch(() => {});
  });
})();
