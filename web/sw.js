// Selvage's service worker: shows Web Push notifications (API.md "Notifications": the payload,
// once decrypted by the browser, is JSON with `title`, `body`, `channel`, `seq`, `id`) and
// opens the conversation when one is clicked. It caches nothing: the app is small and served
// by the edge, and a stale copy of it would be worse than a request.

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: 'Selvage', body: event.data ? event.data.text() : '' };
  }
  const channel = data.channel?.id;
  event.waitUntil(self.registration.showNotification(data.title || 'Selvage', {
    body: data.body || data.text || '',
    // One notification per conversation: a newer push replaces the one still shown.
    tag: channel || data.id,
    renotify: Boolean(channel || data.id), // …and says so: it is news
    icon: '/icon.png', // Chrome shows no SVG in a notification
    data: { channel, seq: data.seq },
  }));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const { channel } = event.notification.data || {};
  const target = channel ? `/#c=${encodeURIComponent(channel)}` : '/';
  event.waitUntil((async () => {
    const tabs = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const tab = tabs.find((t) => new URL(t.url).origin === self.location.origin);
    if (tab) {
      tab.postMessage({ type: 'open', channel });
      return tab.focus();
    }
    return self.clients.openWindow(target);
  })());
});
