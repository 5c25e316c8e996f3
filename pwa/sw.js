// Keeps the app shell and the last-known inbox available offline; decisions always go to the network.
const SHELL = "preloop-shell-v2";
const DATA = "preloop-data-v1";
const FILES = ["/app/", "/app/app.js", "/app/passkeys.js", "/app/totp.js", "/app/push.js", "/app/chatlinks.js",
               "/app/style.css",
               "/app/manifest.webmanifest", "/app/icon-192.png", "/app/icon-512.png", "/app/icon-maskable-512.png"];
// What the app reads to draw the inbox; kept (per person, dropped at sign-out) for offline reloads.
const REMEMBERED = [/^\/api\/v1\/me$/, /^\/api\/v1\/approvals$/];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

async function fromCache(request, cacheName) {
  const hit = await caches.open(cacheName).then((cache) => cache.match(request));
  if (!hit) return Response.error();
  const headers = new Headers(hit.headers);
  headers.set("x-preloop-offline", "1"); // the app shows its "offline" banner
  return new Response(await hit.blob(), { status: hit.status, statusText: hit.statusText, headers });
}

async function networkFirst(request, cacheName) {
  try {
    const response = await fetch(request);
    if (response.ok) {
      const copy = response.clone();
      caches.open(cacheName).then((cache) => cache.put(request, copy));
    }
    return response;
  } catch {
    return fromCache(request, cacheName);
  }
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/api/")) {
    const inbox = url.pathname !== "/api/v1/approvals" || url.searchParams.get("status") === "pending";
    if (inbox && REMEMBERED.some((pattern) => pattern.test(url.pathname))) {
      event.respondWith(networkFirst(event.request, DATA));
    }
    return;
  }
  if (!url.pathname.startsWith("/app/")) return;
  const shell = url.pathname === "/app/index.html" ? new Request("/app/") : event.request;
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok && FILES.includes(url.pathname)) {
      const copy = response.clone();
      caches.open(SHELL).then((cache) => cache.put(shell, copy));
    }
    return response;
  }).catch(() => caches.match(shell, { ignoreSearch: true }).then((hit) => hit || Response.error())));
});

self.addEventListener("message", (event) => {
  if (event.data?.forget) caches.delete(DATA); // signed out: the cached inbox was that person's
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
    data: { navigate: ownUrl(note.navigate), request_id: preloop.request_id, event: preloop.event,
            passkey_required: Boolean(preloop.passkey_required) },
    actions: (note.actions || []).map((a) => ({ action: a.action, title: a.title })),
  });
  event.waitUntil(shown);
});

// Take over open app pages at once, so a notification click can move them to the request.
self.addEventListener("activate", (event) => event.waitUntil(
  caches.keys().then((names) => Promise.all(names.filter((n) => n.startsWith("preloop-shell-") && n !== SHELL)
    .map((n) => caches.delete(n)))).then(() => self.clients.claim())));

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
    const response = data.passkey_required ? null : await fetch(`/api/v1/approvals/${data.request_id}/${event.action}`, {
      method: "POST",
      credentials: "include",
      headers: { "content-type": "application/json" },
      body: "{}",
    }).catch(() => null);
    if (response && response.ok) return;
    // Not decided here (a reason or a passkey is needed, or we are signed out): open the request with
    // that decision one tap away (#/requests/<id>?action=approve).
    await openRequest(`${data.navigate || ownUrl(`/app/#/requests/${data.request_id}`)}?action=${event.action}`);
    return;
  }
  await openRequest(data.navigate || ownUrl("/app/"));
}

self.addEventListener("notificationclick", (event) => {
  const work = handleClick(event);
  if (event.isTrusted) event.waitUntil(work); // waitUntil refuses events a script dispatched
});
