// Keeps the app shell available offline; decisions always go to the network.
const SHELL = "preloop-shell-v1";
const FILES = ["/app/", "/app/app.js", "/app/push.js", "/app/style.css", "/app/manifest.webmanifest", "/app/icon.svg"];
self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)));
});
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.pathname.startsWith("/api/")) return;
  event.respondWith(fetch(event.request).catch(() => caches.match(event.request)));
});

// Web Push: show what the hub sent (Declarative Web Push JSON), replacing the earlier one by tag.
function ownUrl(link) {
  // Only ever open our own app, whatever origin the hub's public URL names.
  const url = new URL(link || "/app/", self.location.origin);
  return self.location.origin + url.pathname + url.search + url.hash;
}

self.addEventListener("push", (event) => {
  let message = {};
  try { message = event.data ? event.data.json() : {}; } catch { message = {}; }
  const note = message.notification || { title: "Preloop", body: "A request is waiting for you", navigate: "/app/" };
  const preloop = message.preloop || {};
  const shown = self.registration.showNotification(note.title || "Preloop", {
    body: note.body || "",
    tag: note.tag,
    renotify: preloop.event !== "outcome",
    requireInteraction: Boolean(note.require_interaction),
    lang: note.lang,
    dir: note.dir,
    data: { navigate: ownUrl(note.navigate), request_id: preloop.request_id, event: preloop.event },
    actions: (note.actions || []).map((a) => ({ action: a.action, title: a.title })),
  });
  event.waitUntil(shown);
});

// Take over open app pages at once, so a notification click can move them to the request.
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function openRequest(url) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    if (new URL(client.url).pathname.startsWith("/app/")) {
      const moved = await client.navigate(url).catch(() => null);
      if (!moved) client.postMessage({ navigate: url }); // a page we do not control moves itself
      await (moved || client).focus?.().catch(() => {});
      return;
    }
  }
  await self.clients.openWindow(url);
}

async function handleClick(event) {
  const data = event.notification.data || {};
  event.notification.close();
  if ((event.action === "approve" || event.action === "decline") && data.request_id) {
    const response = await fetch(`/api/v1/approvals/${data.request_id}/${event.action}`, {
      method: "POST",
      credentials: "include",
      headers: { "content-type": "application/json" },
      body: "{}",
    }).catch(() => null);
    if (response && response.ok) return;
    // Not decided here (a reason or a passkey is needed, or we are signed out): open the request.
  }
  await openRequest(data.navigate || ownUrl("/app/"));
}

self.addEventListener("notificationclick", (event) => {
  const work = handleClick(event);
  if (event.isTrusted) event.waitUntil(work); // waitUntil refuses events a script dispatched
});
