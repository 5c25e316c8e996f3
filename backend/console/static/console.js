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

  document.addEventListener("DOMContentLoaded", function () { setupBell(); listen(); setupIssueLinks(); });
})();
