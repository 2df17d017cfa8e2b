// The first module to run (index.html loads it before app.js, and it imports nothing): it takes
// the token out of the URL and opens the session's WebSocket at once, while the rest of the
// client is still being fetched. If it knows which conversation will open first (the URL's
// `#c=`, else the last one open), it asks for its history as soon as the socket opens, so
// `hello` and the first page arrive back to back: the fast start of the Flannel model, with
// no round trip waiting on JavaScript. session.js adopts the socket and whatever it received.

export const TOKEN_KEY = 'selvage.token';

/** The fragment's parameters: `token`, `c` (a conversation), `m` (a message's seq in it). */
export function fragmentParams() {
  return new URLSearchParams(location.hash.slice(1));
}

/** The parameters the page was opened with (before the token is taken out). */
export const startParams = fragmentParams();

/**
 * Moves a token from the fragment (`#token=…`, which browsers never send to a server) into this
 * tab's sessionStorage and out of the address bar, history included. Returns the tab's token.
 */
export function takeToken() {
  const params = fragmentParams();
  const token = params.get('token');
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The session's address on this edge, resuming after `cursor` when given. */
export function sessionUrl(token, cursor) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let url = `${scheme}//${location.host}/v1/connect?token=${encodeURIComponent(token)}`;
  if (cursor) url += `&resume=${encodeURIComponent(cursor)}`;
  return url;
}

/** The request id of the first history query, sent before the client has loaded. */
export const BOOT_QUERY_ID = 'boot-history';

function openEarly(token) {
  const channel = startParams.get('c') || localStorage.getItem('selvage.last');
  const ws = new WebSocket(sessionUrl(token));
  const frames = [];
  ws.onmessage = (e) => frames.push(e);
  // A socket that fails this early is left to session.js, which connects again.
  ws.onclose = () => {};
  const query = channel && !startParams.get('m')
    ? { type: 'query', id: BOOT_QUERY_ID, q: 'history', channel, limit: 50 }
    : null;
  // The edge reads frames once it has sent `hello`; one sent now waits in the socket till then.
  if (query) ws.onopen = () => ws.send(JSON.stringify(query));
  return { ws, frames, query };
}

export const token = takeToken();

/** `{ws, frames, query}`: the socket opened early, what it received so far, and its query. */
export const early = token ? openEarly(token) : null;
