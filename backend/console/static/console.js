// The console's only script besides htmx: the bell's dropdown and the live event stream.
// No inline scripts or handlers anywhere (the hub's CSP allows 'self' scripts only).
(function () {
  "use strict";

  function setupBell() {
    var button = document.getElementById("bell-button");
    var menu = document.getElementById("bell-menu");
    if (!button || !menu) return;
    function close() { menu.hidden = true; button.setAttribute("aria-expanded", "false"); }
    button.addEventListener("click", function () {
      var open = menu.hidden;
      menu.hidden = !open;
      button.setAttribute("aria-expanded", open ? "true" : "false");
      if (open) {
        var first = menu.querySelector("a");
        if (first) first.focus();
      }
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && !menu.hidden) { close(); button.focus(); }
    });
    document.addEventListener("click", function (event) {
      if (!menu.hidden && !menu.contains(event.target) && !button.contains(event.target)) close();
    });
  }

  // Any approval event refreshes whatever listens for `preloop:approvals` (the bell, the pending list).
  // The event is only a hint: the fragments are fetched from the server, which has the truth.
  function listen() {
    if (!document.getElementById("bell") || !window.EventSource) return;
    var kinds = ["approval.requested", "approval.approved", "approval.declined", "approval.expired",
                 "approval.cancelled", "approval.escalated", "approval.executing", "approval.executed",
                 "approval.failed", "ready"];
    var source = new EventSource("/api/v1/events");
    var timer = null;
    function refresh() {
      if (timer) return;
      timer = setTimeout(function () {
        timer = null;
        if (window.htmx) window.htmx.trigger(document.body, "preloop:approvals");
      }, 150);
    }
    kinds.forEach(function (kind) { source.addEventListener(kind, refresh); });
    // Someone commented: an open approval page of that request fetches its discussion again.
    source.addEventListener("approval.commented", function (event) {
      var id = "";
      try { id = JSON.parse(event.data).request_id || ""; } catch (e) { return; }
      var box = document.querySelector('[data-comments-for="' + (window.CSS ? CSS.escape(id) : id) + '"]');
      if (box && window.htmx) window.htmx.trigger(box, "preloop:comments");
    });
    document.body.setAttribute("data-live", "connecting");
    source.addEventListener("ready", function () { document.body.setAttribute("data-live", "on"); });
    source.onerror = function () { document.body.setAttribute("data-live", "retrying"); };
  }

  // "line 4, column 7" in the check panel puts the editor's cursor there.
  function setupIssueLinks() {
    document.addEventListener("click", function (event) {
      var link = event.target.closest ? event.target.closest("a.goto") : null;
      var editor = document.getElementById("source");
      if (!link || !editor) return;
      event.preventDefault();
      var line = parseInt(link.getAttribute("data-line"), 10) || 1;
      var column = parseInt(link.getAttribute("data-column"), 10) || 1;
      var lines = editor.value.split("\n");
      var offset = 0;
      for (var i = 0; i < Math.min(line - 1, lines.length); i++) offset += lines[i].length + 1;
      offset += Math.max(0, column - 1);
      editor.focus();
      editor.setSelectionRange(offset, offset);
    });
  }

  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || ""; }
    catch (e) { return ""; }
  }

  // The structured rule view: typing in the editor refreshes it (via the `preloop:draft` event);
  // a move asks the server to rewrite the draft, which goes back into the editor and is checked again.
  function setupRules() {
    var panel = document.getElementById("rules");
    var editor = document.getElementById("source");
    var status = document.getElementById("rules-status");
    if (!panel || !editor) return;
    editor.addEventListener("input", function (event) {
      if (event.isTrusted && window.htmx) window.htmx.trigger(document.body, "preloop:draft");
    });

    function move(entry, rule, to, direction) {
      var body = new URLSearchParams();
      body.set("source", editor.value);
      body.set("entry", entry);
      body.set("rule", rule);
      body.set("to", to);
      return fetch("/console/policies/rules/move", {
        method: "POST", credentials: "same-origin", body: body,
        headers: { "X-CSRF-Token": csrfToken(), "Content-Type": "application/x-www-form-urlencoded" }
      }).then(function (response) {
        if (response.status === 401) { window.location.href = "/console/login"; return null; }
        return response.text();
      }).then(function (html) {
        if (html === null) return;
        panel.innerHTML = html;  // server-rendered, escaped by the template engine
        var fresh = document.getElementById("rules-new-source");
        if (fresh) {
          editor.value = fresh.value;
          editor.dispatchEvent(new Event("input", { bubbles: true }));  // the live check runs again
          if (status) status.textContent = fresh.getAttribute("data-announce") || "Rule moved";
        } else if (status) {
          var error = panel.querySelector(".error");
          status.textContent = error ? error.textContent : "The rule was not moved";
        }
        var list = panel.querySelector('ol[data-entry="' + entry + '"]');
        var item = list ? list.querySelector('li[data-rule="' + to + '"]') : null;
        if (item) {
          var button = item.querySelector('button[data-move="' + direction + '"]');
          if (!button || button.disabled) button = item.querySelector("button[data-move]:not([disabled])");
          if (button) button.focus();
        }
      });
    }

    panel.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("button[data-move]") : null;
      if (!button) return;
      var item = button.closest("li[data-rule]");
      var list = button.closest("ol[data-entry]");
      var rule = parseInt(item.getAttribute("data-rule"), 10);
      var direction = button.getAttribute("data-move");
      move(list.getAttribute("data-entry"), rule, direction === "up" ? rule - 1 : rule + 1, direction);
    });

    var dragged = null;
    panel.addEventListener("dragstart", function (event) {
      var item = event.target.closest ? event.target.closest("li[data-rule]") : null;
      if (!item) return;
      dragged = item;
      item.classList.add("dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", item.getAttribute("data-rule"));
    });
    panel.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      panel.querySelectorAll(".drop-target").forEach(function (el) { el.classList.remove("drop-target"); });
    });
    function target(event) {
      var item = event.target.closest ? event.target.closest("li[data-rule]") : null;
      return item && dragged && item.parentNode === dragged.parentNode ? item : null;
    }
    panel.addEventListener("dragover", function (event) {
      var item = target(event);
      if (!item) return;
      event.preventDefault();
      panel.querySelectorAll(".drop-target").forEach(function (el) { el.classList.remove("drop-target"); });
      item.classList.add("drop-target");
    });
    panel.addEventListener("drop", function (event) {
      var item = target(event);
      if (!item) return;
      event.preventDefault();
      var from = parseInt(dragged.getAttribute("data-rule"), 10);
      var to = parseInt(item.getAttribute("data-rule"), 10);
      if (from !== to) move(item.parentNode.getAttribute("data-entry"), from, to, to < from ? "up" : "down");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupBell(); listen(); setupIssueLinks(); setupRules();
  });
})();
