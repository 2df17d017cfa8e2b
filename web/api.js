// The origin's HTTP API (docs/API.md), reached through the edge at the same origin: what the
// session protocol does not carry — edits, deletes, reactions, channels, DMs, threads to follow,
// files and push subscriptions.

let token = '';

export function setToken(t) {
  token = t;
}

/** An API failure: `code` is the API's stable error code (`not_found`, `forbidden`, …). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls `METHOD /v1/…` with the token; resolves with the JSON answer (or null for 204). */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'unavailable', 'the server cannot be reached');
  }
  if (response.status === 204) return null;
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const error = json?.error ?? {};
    throw new ApiError(response.status, error.code ?? 'internal', error.message ?? `HTTP ${response.status}`);
  }
  return json;
}

const seqPath = (channel, seq) => `/v1/channels/${encodeURIComponent(channel)}/messages/${seq}`;

export const editMessage = (channel, seq, text) => api('PATCH', seqPath(channel, seq), { text });
export const deleteMessage = (channel, seq) => api('DELETE', seqPath(channel, seq));
export const react = (channel, seq, emoji, add) =>
  api(add ? 'PUT' : 'DELETE', `${seqPath(channel, seq)}/reactions/${encodeURIComponent(emoji)}`);
export const follow = (channel, seq, on) => api(on ? 'PUT' : 'DELETE', `${seqPath(channel, seq)}/follow`);
export const getChannel = (channel) => api('GET', `/v1/channels/${encodeURIComponent(channel)}`);
export const createChannel = (name, isPrivate) => api('POST', '/v1/channels', { name, private: isPrivate });
export const joinChannel = (channel) => api('POST', `/v1/channels/${encodeURIComponent(channel)}/members`);
export const leaveChannel = (channel, user) =>
  api('DELETE', `/v1/channels/${encodeURIComponent(channel)}/members/${encodeURIComponent(user)}`);
export const openDm = (users) => api('POST', '/v1/dms', { users });
