// Web Push for the approver app: the "Enable notifications" button and the subscription it makes.
(() => {
  navigator.serviceWorker?.addEventListener("message", (event) => {
    const target = event.data?.navigate;
    if (typeof target === "string" && new URL(target, location.href).origin === location.origin) location.href = target;
  });
  const button = document.getElementById("enable-push");
  if (!button || !("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) return;
  let vapidKey = null;

  function keyBytes(base64url) {
    const base64 = (base64url + "=".repeat((4 - (base64url.length % 4)) % 4)).replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  }

  async function save(subscription) {
    const response = await fetch("/api/v1/push/subscriptions", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(subscription.toJSON()),
    });
    if (!response.ok) throw new Error((await response.json().catch(() => null))?.error?.message || `HTTP ${response.status}`);
  }

  async function show() {
    // Fetched ahead, so the tap goes straight to the permission prompt (iOS drops a gesture after awaits).
    vapidKey = (await (await fetch("/api/v1/push/vapid-public-key")).json()).public_key;
    const registration = await navigator.serviceWorker.ready;
    const existing = await registration.pushManager.getSubscription();
    if (existing && Notification.permission === "granted") {
      await save(existing).catch(() => {});
      button.textContent = "Notifications on";
      button.disabled = true;
    }
    button.hidden = false;
  }

  button.addEventListener("click", async () => {
    const permission = await Notification.requestPermission(); // first, inside the tap
    if (permission !== "granted") {
      button.textContent = "Notifications blocked in browser settings";
      return;
    }
    try {
      const registration = await navigator.serviceWorker.ready;
      const subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: keyBytes(vapidKey),
      });
      await save(subscription);
      button.textContent = "Notifications on";
      button.disabled = true;
    } catch (error) {
      button.textContent = `Could not enable notifications: ${error.message}`;
    }
  });

  // Shown once signed in (the inbox becomes visible).
  const inbox = document.getElementById("inbox");
  const watch = new MutationObserver(() => { if (!inbox.hidden) { watch.disconnect(); show().catch(() => {}); } });
  if (inbox && !inbox.hidden) show().catch(() => {});
  else if (inbox) watch.observe(inbox, { attributes: true, attributeFilter: ["hidden"] });
})();
