//! A file's record as stored under `(ws, W, file, F)`, and the rules for what a client may
//! declare: names, sizes, media types (ARCHITECTURE §8 "Files").

use selvage_shared::{ChannelId, FileRef, Seq, Thumb, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{OriginError, Result},
    store::{decode, keys, KvTxn, StoreError},
};

/// Longest file name kept, in bytes (a longer one is cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest media type accepted, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// An upload URL was handed out; the object may or may not be there yet.
    Pending,
    /// The object was checked against what was declared; the file may be (or is) shared.
    Ready,
    /// The object was not what was declared; it was deleted.
    Failed,
    /// Deleted by its uploader or an admin; nobody may read it.
    Deleted,
    /// Never completed: the sweeper removed it `files.pending_ttl_secs` after it was declared.
    Expired,
}

impl FileState {
    /// Its name, as in the API and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Ready => "ready",
            FileState::Failed => "failed",
            FileState::Deleted => "deleted",
            FileState::Expired => "expired",
        }
    }
}

/// A thumbnail as the file's record keeps it (module `thumbs` makes them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbRecord {
    /// The box it fits: one of `files.thumb_sizes`.
    pub size: u32,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// `image/jpeg`, or `image/png` for an image with transparent pixels.
    pub content_type: String,
}

/// A file's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `F…`.
    pub id: String,
    /// The sanitised name.
    pub name: String,
    /// Declared size in bytes; the upload URL allows exactly this many.
    pub size: u64,
    /// Declared media type; the upload URL allows exactly this one.
    pub content_type: String,
    /// The object's key in the bucket: `ws/{W}/{random}/{name}`.
    pub object_key: String,
    /// Who asked to upload it.
    pub uploader: UserId,
    /// When the upload was asked for, ms since the epoch.
    pub created_at: i64,
    /// Where it is in its life.
    pub state: FileState,
    /// The channel it is shared in, once its uploader completed it there.
    #[serde(default)]
    pub channel: Option<ChannelId>,
    /// The uploader's `client_msg_id` of the message that shares it (what makes completing
    /// again a retry rather than a second share).
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// The `seq` of the message that carries it, once posted.
    #[serde(default)]
    pub seq: Option<Seq>,
    /// Its thumbnails, smallest first, once the thumbnail worker made them (images only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbs: Vec<ThumbRecord>,
    /// Why the thumbnail worker made none and never will (over its limits, not an image it can
    /// read); for the log and the API's `thumbnail: "none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_thumbs: Option<String>,
}

impl FileRecord {
    /// The file as messages carry it.
    pub fn to_ref(&self) -> FileRef {
        FileRef {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            thumbs: self.thumb_refs(),
        }
    }

    /// Its thumbnails as messages carry them.
    pub fn thumb_refs(&self) -> Vec<Thumb> {
        self.thumbs.iter().map(|t| Thumb { size: t.size, width: t.width, height: t.height }).collect()
    }

    /// Where the thumbnail worker stands with it: `None` for a file that gets no thumbnails
    /// (not a raster image); else `pending` (not made yet), `ready` or `none` (it never will).
    pub fn thumbnail(&self) -> Option<&'static str> {
        if !self.thumbs.is_empty() {
            Some("ready")
        } else if self.no_thumbs.is_some() {
            Some("none")
        } else if is_inline_image(&self.content_type) {
            Some("pending")
        } else {
            None
        }
    }

    /// The file as the API shows it.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id, "name": self.name, "size": self.size, "content_type": self.content_type,
            "state": self.state, "user": self.uploader, "created_at": self.created_at,
        });
        if let (Some(c), Some(seq)) = (&self.channel, self.seq) {
            v["channel"] = serde_json::json!(c);
            v["seq"] = serde_json::json!(seq);
        }
        if let Some(state) = self.thumbnail() {
            v["thumbnail"] = serde_json::json!(state);
        }
        if !self.thumbs.is_empty() {
            v["thumbs"] = serde_json::json!(self.thumb_refs());
        }
        v
    }

    /// Every object the bucket may hold for the file: its bytes and its thumbnails of the given
    /// sizes (those recorded, or all those the worker might have made).
    pub fn object_keys(&self, thumb_sizes: impl IntoIterator<Item = u32>) -> Vec<String> {
        let mut keys = vec![self.object_key.clone()];
        keys.extend(thumb_sizes.into_iter().map(|size| thumb_key(&self.object_key, size)));
        keys
    }
}

/// The object key of a file's thumbnail of `size`, derived from the file's own object key
/// (`ws/{W}/{random}/{name}` → `ws/{W}/{random}.thumb-{size}`): the same every time it is
/// made, so making it again overwrites it, and as unguessable as the file's key. It sits beside
/// the file's folder rather than in it, so no file name can collide with it, on S3 or on a
/// store that keeps keys as paths.
pub fn thumb_key(object_key: &str, size: u32) -> String {
    let folder = object_key.rsplit_once('/').map_or(object_key, |(folder, _)| folder);
    format!("{folder}.thumb-{size}")
}

/// Reads a file record of `w`.
pub async fn load(tx: &mut dyn KvTxn, w: &WorkspaceId, id: &str) -> Result<Option<FileRecord>, StoreError> {
    match tx.get(&keys::file(w, id)).await? {
        None => Ok(None),
        Some(raw) => decode("file", &raw).map(Some),
    }
}

/// Writes a file record.
pub fn write(tx: &mut dyn KvTxn, w: &WorkspaceId, file: &FileRecord) -> Result<(), StoreError> {
    tx.set(&keys::file(w, &file.id), &selvage_shared::to_msgpack(file))
}

/// Whether `raw` has the shape of a file id (`F` and 12 base32 characters), so that anything
/// else answers 404 without a read.
pub fn is_file_id(raw: &str) -> bool {
    raw.len() == 13 && raw.starts_with('F') && raw.bytes().skip(1).all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// A name safe to store, show and put at the end of an object key: path separators become
/// `_`, control characters go, surrounding white space goes, at most [`MAX_NAME_BYTES`], and
/// never empty, `.` or `..` (those become `file`).
pub fn sanitise_name(raw: &str) -> String {
    let cleaned: String =
        raw.chars().filter(|c| !c.is_control()).map(|c| if c == '/' || c == '\\' { '_' } else { c }).collect();
    let mut name = cleaned.trim().to_string();
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name = name.trim_end().to_string();
    }
    if name.is_empty() || name == "." || name == ".." {
        "file".into()
    } else {
        name
    }
}

/// Checks a declared media type: `type/subtype` with optional parameters, printable ASCII, at
/// most [`MAX_CONTENT_TYPE_BYTES`]. It becomes a signed header of the upload, so it must be a
/// value a client can send as is.
pub fn validate_content_type(ct: &str) -> Result<()> {
    let essence = ct.split(';').next().unwrap_or_default();
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let ok = !ct.is_empty()
        && ct.len() <= MAX_CONTENT_TYPE_BYTES
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && ct.trim() == ct
        && essence.split_once('/').is_some_and(|(t, s)| token(t) && token(s.trim_end()));
    if ok {
        Ok(())
    } else {
        Err(OriginError::BadRequest(format!(
            "content_type must be a media type such as image/png or application/pdf (printable ASCII, at most \
             {MAX_CONTENT_TYPE_BYTES} bytes)"
        )))
    }
}

/// Whether a browser may show the file inline: raster images only (an SVG can carry script).
pub fn is_inline_image(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "image/png" | "image/jpeg" | "image/gif" | "image/webp")
}

/// A `Content-Disposition` value naming the file: an ASCII fallback and the UTF-8 name
/// (RFC 6266, RFC 5987).
pub fn content_disposition(inline: bool, name: &str) -> String {
    let fallback: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitise_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitise_name("a\\b\u{0}c\nd.txt"), "a_bcd.txt");
        assert_eq!(sanitise_name("  \u{7}  "), "file");
        assert_eq!(sanitise_name(".."), "file");
        assert_eq!(sanitise_name(""), "file");
        let long = sanitise_name(&"é".repeat(300));
        assert!(long.len() <= MAX_NAME_BYTES && long.chars().all(|c| c == 'é'), "{long}");
        assert_eq!(sanitise_name("report 2026.pdf"), "report 2026.pdf");
    }

    #[test]
    fn content_types_are_checked() {
        for ok in ["image/png", "application/pdf", "text/plain; charset=utf-8", "application/vnd.ms-excel"] {
            validate_content_type(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "png", "image/", "/png", "text/plain\r\nx-evil: 1", " image/png", "a/b\u{e9}"] {
            assert!(validate_content_type(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn dispositions_quote_safely() {
        let d = content_disposition(false, "a \"b\".txt");
        assert_eq!(d, "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt");
        assert!(content_disposition(true, "ü.png").starts_with("inline; filename=\"_.png\""));
        assert!(is_inline_image("image/PNG") && !is_inline_image("image/svg+xml") && !is_inline_image("text/html"));
    }

    #[test]
    fn thumbnail_keys_sit_beside_the_file_and_depend_on_nothing_else() {
        assert_eq!(thumb_key("ws/W1/0a1b/holiday.png", 360), "ws/W1/0a1b.thumb-360");
        assert_eq!(thumb_key("ws/W1/0a1b/thumbs", 1024), "ws/W1/0a1b.thumb-1024");
        let file = FileRecord {
            id: "F1".into(),
            name: "a.png".into(),
            size: 3,
            content_type: "image/png".into(),
            object_key: "ws/W1/0a1b/a.png".into(),
            uploader: UserId::new_unchecked("U1"),
            created_at: 1,
            state: FileState::Ready,
            channel: None,
            client_msg_id: None,
            seq: None,
            thumbs: Vec::new(),
            no_thumbs: None,
        };
        assert_eq!(file.object_keys([360]), ["ws/W1/0a1b/a.png", "ws/W1/0a1b.thumb-360"]);
        assert_eq!(file.thumbnail(), Some("pending"));
        assert!(file.view().get("thumbs").is_none());
        let pdf = FileRecord { content_type: "application/pdf".into(), ..file.clone() };
        assert_eq!(pdf.thumbnail(), None);
        let refused = FileRecord { no_thumbs: Some("too large".into()), ..file.clone() };
        assert_eq!(refused.view()["thumbnail"], "none");
        let thumb = ThumbRecord { size: 360, width: 360, height: 200, content_type: "image/jpeg".into() };
        let made = FileRecord { thumbs: vec![thumb], ..file };
        assert_eq!(made.view()["thumbs"], serde_json::json!([{ "size": 360, "width": 360, "height": 200 }]));
        assert_eq!(made.to_ref().thumbs, vec![Thumb { size: 360, width: 360, height: 200 }]);
        let back: FileRecord = selvage_shared::from_msgpack(&selvage_shared::to_msgpack(&made)).unwrap();
        assert_eq!(back, made);
    }

    #[test]
    fn file_ids_are_recognised() {
        assert!(is_file_id(&crate::ids::new_id('F')));
        assert!(!is_file_id("C0123456789AB") && !is_file_id("F01") && !is_file_id("F0123456789a_"));
    }
}
