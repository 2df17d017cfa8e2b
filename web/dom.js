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

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

export function formatTime(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  return today ? timeFormat.format(date) : `${dayFormat.format(date)} ${timeFormat.format(date)}`;
}

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
