// DOM building without innerHTML: every piece of user text becomes a text node, so nothing a
// message says can turn into markup, and the strict Content-Security-Policy never needs an
// exception (no inline handlers, no style attributes).

/**
 * Creates an element: `h('button', {class: 'x', 'data-testid': 'y', onclick: fn}, 'text', child)`.
 * Keys starting with `on` are listeners; `true` sets a boolean attribute, `false`/`null` skips it.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces every child of `el`. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

// Icons as SVG paths (24×24, stroked), drawn into the page: the same on every system, where
// emoji fonts are not (Chromium on a bare Debian has none), and no request or inline style.
const ICONS = {
  moon: 'M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z',
  bell: 'M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9M13.7 21a2 2 0 0 1-3.4 0',
  lock: 'M5 11h14v10H5zM8 11V7a4 4 0 0 1 8 0v4',
  smile: 'M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zM8 14s1.5 2 4 2 4-2 4-2M9 9h.01M15 9h.01',
  reply: 'M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z',
  pencil: 'M17 3a2.8 2.8 0 0 1 4 4L7.5 20.5 2 22l1.5-5.5z',
  trash: 'M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6',
  clip: 'M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5',
  close: 'M18 6L6 18M6 6l12 12',
  list: 'M4 6h16M4 12h16M4 18h16',
  plus: 'M12 5v14M5 12h14',
  file: 'M14 2H6v20h12V6zM14 2v4h4',
  people: 'M17 21v-2a4 4 0 0 0-4-4H5a4 4 0 0 0-4 4v2M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM23 21v-2a4 4 0 0 0-3-3.9M16 3.1a4 4 0 0 1 0 7.8',
};

/** An icon, hidden from screen readers: the button or link around it carries the label. */
export function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon-svg icon-${name}`);
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name]);
  svg.append(path);
  return svg;
}

/** The emoji the picker offers, by the names the API stores (`a-z 0-9 _ + - ' :`). */
export const EMOJI = {
  thumbsup: '👍',
  heart: '❤️',
  joy: '😂',
  tada: '🎉',
  eyes: '👀',
  rocket: '🚀',
  white_check_mark: '✅',
  pray: '🙏',
};

export function emojiGlyph(name) {
  return EMOJI[name] ?? `:${name}:`;
}

// Times in the browser's locale. Chromium takes 30–50 ms to make a page's first formatter (it
// loads the locale's data), so they are made just after the first message list is painted
// (`localiseTimes`, or two seconds after load at the latest); until then times read `14:05` or
// `2026-12-07`, and the `<time>` elements on screen are redone once the formatters exist.
let formats;
const pad = (n) => String(n).padStart(2, '0');
const day = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;

/** A time of today as its time of day (`14:05`, `2:05 PM`), an earlier one as its date. */
export function formatTime(ms) {
  const d = new Date(ms);
  const today = d.toDateString() === new Date().toDateString();
  if (formats) return formats[today ? 0 : 1].format(d);
  return today ? clock(d) : day(d);
}

/** The full date and time, for a `title`. */
export function fullTime(ms) {
  const d = new Date(ms);
  return formats ? formats[2].format(d) : `${day(d)} ${clock(d)}`;
}

/** Makes the locale's formatters and rewrites the times on screen with them. */
export function localiseTimes() {
  if (formats) return;
  formats = [{ timeStyle: 'short' }, { dateStyle: 'medium' }, { dateStyle: 'full', timeStyle: 'short' }]
    .map((o) => new Intl.DateTimeFormat(undefined, o));
  for (const t of document.querySelectorAll('time[datetime]')) {
    const ms = Date.parse(t.dateTime);
    t.textContent = formatTime(ms);
    t.title = fullTime(ms);
  }
}
setTimeout(localiseTimes, 2000);

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// `<@U123>` / `<@U123|label>`, `<!channel>` / `<!here>`, `@channel` / `@here`, and links.
const MARKUP = /<@([A-Za-z0-9_-]{1,32})(?:\|([^>]*))?>|<!(channel|here)>|(^|\s)@(channel|here)\b|(https?:\/\/[^\s<>]+[^\s<>.,;:!?)'"])/g;

/**
 * A message text as nodes: mentions become highlighted names (looked up with `userName`), links
 * become anchors that open in a new tab. `selfId` marks mentions of the reader.
 */
export function renderText(text, userName, selfId) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(MARKUP)) {
    const [whole, userId, label, bang, lead, word, url] = match;
    let start = match.index;
    let node;
    if (userId) {
      node = h('span', { class: userId === selfId ? 'mention self' : 'mention', 'data-user': userId },
        `@${label || userName(userId)}`);
    } else if (bang || word) {
      if (lead) start += lead.length;
      node = h('span', { class: 'mention broadcast' }, `@${bang || word}`);
    } else if (url) {
      node = h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, url);
    }
    nodes.push(text.slice(last, start), node);
    last = match.index + whole.length;
  }
  nodes.push(text.slice(last));
  return nodes.filter((n) => n !== '');
}

/**
 * A search snippet as nodes with its highlights marked. The API gives highlights as byte
 * ranges of the UTF-8 fragment, so they are cut from the bytes, not from the JS string.
 */
export function renderSnippet(fragment, highlights) {
  const bytes = new TextEncoder().encode(fragment);
  const decoder = new TextDecoder();
  const nodes = [];
  let last = 0;
  for (const [start, end] of highlights ?? []) {
    if (start < last || end > bytes.length) continue;
    nodes.push(decoder.decode(bytes.slice(last, start)), h('mark', {}, decoder.decode(bytes.slice(start, end))));
    last = end;
  }
  nodes.push(decoder.decode(bytes.slice(last)));
  return nodes;
}

let toastTimer = 0;

/** Shows a short notice at the bottom of the window (errors the user should know about). */
export function toast(text) {
  const el = $('#toast');
  if (!el) return;
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

/** Shows the page's one modal dialog with `title` and `body`; `view` names what it shows. */
export function dialog(title, view, ...body) {
  const d = $('#dialog');
  d.dataset.view = view;
  d.replaceChildren(
    h('header', { class: 'panel-header' },
      h('h2', { id: 'dialog-title' }, title),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Close', onclick: () => d.close() }, icon('close'))),
    ...body);
  d.setAttribute('aria-labelledby', 'dialog-title');
  if (!d.open) d.showModal();
  return d;
}
