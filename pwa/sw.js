// Keeps the app shell available offline; decisions always go to the network.
const SHELL = "preloop-shell-v1";
const FILES = ["/app/", "/app/app.js", "/app/style.css", "/app/manifest.webmanifest", "/app/icon.svg"];
self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)));
});
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.pathname.startsWith("/api/")) return;
  event.respondWith(fetch(event.request).catch(() => caches.match(event.request)));
});
