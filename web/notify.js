// Do-not-disturb and desktop notifications.
//
// DnD is `set_presence {dnd}` on the session; the user's own presence (the session follows it
// with `presence_sub`) tells every tab whether it is on. Notifications are Web Push (API.md
// "Notifications"): the origin pushes only while the user is away from every session, so a
// service worker (sw.js) shows them even with no tab open. Asked for only when the user clicks.

import { $, icon, toast } from './dom.js';
import { api } from './api.js';

let ctx; // {store, session}
let dndButton;
let pushButton;

export function initNotify(context) {
  ctx = context;
  dndButton = $('#dnd-toggle');
  pushButton = $('#push-toggle');
  pushButton.replaceChildren(icon('bell'));
  showDnd(false);
  dndButton.addEventListener('click', () => {
    const on = dndButton.getAttribute('aria-pressed') !== 'true';
    ctx.session.fire({ type: 'set_presence', dnd: on });
    showDnd(on); // the presence event confirms it
  });
  ctx.store.on('presence', (user) => {
    if (user === ctx.store.self?.id) showDnd(ctx.store.presence.get(user) === 'dnd');
  });
  if (!('serviceWorker' in navigator) || !('PushManager' in window)) {
    pushButton.hidden = true;
    return;
  }
  pushButton.addEventListener('click', enablePush);
  // Already allowed in an earlier visit: keep the subscription current, quietly.
  if (Notification.permission === 'granted' && localStorage.getItem('selvage.push') === 'on') {
    subscribe().catch((e) => console.warn('selvage: push subscription', e));
  }
  showPush();
}

function showDnd(on) {
  dndButton.setAttribute('aria-pressed', String(on));
  dndButton.replaceChildren(icon('moon'), on ? ' Do not disturb' : ' Available');
  dndButton.title = on ? 'Do not disturb is on: notifications wait' : 'Turn on do not disturb';
}

function showPush() {
  const on = Notification.permission === 'granted' && localStorage.getItem('selvage.push') === 'on';
  pushButton.setAttribute('aria-pressed', String(on));
  pushButton.title = on ? 'Desktop notifications are on' : 'Turn on desktop notifications';
}

async function enablePush() {
  try {
    if (Notification.permission !== 'granted' && (await Notification.requestPermission()) !== 'granted') {
      toast('Notifications are blocked for this site in the browser.');
      return;
    }
    await subscribe();
    localStorage.setItem('selvage.push', 'on');
    toast('Desktop notifications are on.');
  } catch (e) {
    localStorage.removeItem('selvage.push');
    toast(`Desktop notifications could not be turned on: ${e.message}`);
  }
  showPush();
}

/** Registers the service worker and hands the browser's push subscription to the origin. */
async function subscribe() {
  const registration = await navigator.serviceWorker.register('/sw.js');
  await navigator.serviceWorker.ready;
  const { public_key: key } = await api('GET', '/v1/push/key');
  let sub = await registration.pushManager.getSubscription();
  if (!sub) {
    // Refused when the browser has no push service (a headless or de-Googled Chromium), or
    // blocks push for this site: say so in words, not as the browser's terse DOMException.
    sub = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlBytes(key) })
      .catch((e) => {
        throw new Error(`this browser refused to subscribe to push messages, so it cannot be sent any (${e.message}).`);
      });
  }
  await api('POST', '/v1/push/subscriptions', sub.toJSON());
}

function base64UrlBytes(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  return Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
}
