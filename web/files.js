// Files (API.md "Files"): the bytes go straight between the browser and the object store through
// short-lived presigned URLs, never through Selvage. Upload: declare, PUT to the URL, complete
// (which posts the message carrying the file). Download and previews: ask the origin for URLs
// when a file is drawn, and keep them a little less long than they live.

import { api } from './api.js';

const URL_REUSE_MS = 4 * 60 * 1000; // download URLs live 300 s by default

const urls = new Map(); // file id → {at, answer: Promise<{file, download, thumbs}>}

function fileUrls(id) {
  const held = urls.get(id);
  if (held && Date.now() - held.at < URL_REUSE_MS) return held.answer;
  const answer = readFile(id);
  urls.set(id, { at: Date.now(), answer });
  answer.catch(() => urls.delete(id));
  return answer;
}

/** Pauses before asking again for a file others cannot read yet. */
const NOT_YET_MS = [250, 750, 2000];

/**
 * `GET /v1/files/{id}`. The message carrying a file is committed before the file is marked as
 * shared by it, so for a moment others see the message and get `404` for the file: asked
 * again a few times before giving up.
 */
async function readFile(id) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api('GET', `/v1/files/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.code !== 'not_found' || attempt >= NOT_YET_MS.length) throw e;
      await new Promise((resolve) => setTimeout(resolve, NOT_YET_MS[attempt]));
    }
  }
}

/** The URL to draw an image with: its smallest thumbnail once made, the image itself until then. */
export async function previewUrl(file) {
  const answer = await fileUrls(file.id);
  return (answer.thumbs?.[0]?.download ?? answer.download).url;
}

/** Each URL comes as a presigned request: `{url, method, headers, expires_at}`. */
export async function downloadUrl(id) {
  return (await fileUrls(id)).download.url;
}

/** Headers the browser sets itself and refuses to be given; the signature covers their values. */
const BROWSER_HEADERS = new Set(['content-length', 'host']);

/**
 * Uploads one file and shares it in `channel`; resolves with the completed answer
 * (`{file, channel, seq, ts, message}`). Rejects with an `ApiError` (`not_found` when the origin
 * runs without files, `too_large`, `forbidden` for a full quota).
 */
export async function uploadFile(file, { channel, clientMsgId, text, threadRoot }) {
  const type = file.type || 'application/octet-stream';
  const declared = await api('POST', '/v1/files', { name: file.name || 'pasted', size: file.size, content_type: type });
  const { url, method, headers } = declared.upload;
  const sent = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (!BROWSER_HEADERS.has(name.toLowerCase())) sent[name] = value;
  }
  const put = await fetch(url, { method: method || 'PUT', headers: sent, body: file });
  if (!put.ok) throw new Error(`the upload was refused (HTTP ${put.status})`);
  const body = { channel, client_msg_id: clientMsgId };
  if (text) body.text = text;
  if (threadRoot) body.thread_root = threadRoot;
  return api('POST', `/v1/files/${encodeURIComponent(declared.file.id)}/complete`, body);
}
