//! `selvage dev`'s mailbox: an SMTP server on loopback that keeps every email it is given as a
//! file, so that the notifier's email digests can be read on a development machine without a
//! mail server (as MailHog or Mailpit do for other stacks).
//!
//! It speaks the little of SMTP (RFC 5321) a client needs to hand over a message — `EHLO`/
//! `HELO`, `MAIL`, `RCPT`, `DATA`, `RSET`, `NOOP`, `QUIT` — with no TLS and no authentication,
//! and listens on loopback only. Written here rather than taken from a crate: the SMTP server
//! crates are full servers with their own threads and TLS, and this is a development sink of a
//! hundred lines. Lines are capped at 4 KiB and a message at 10 MiB; a client past either is
//! told so and disconnected.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// Longest command or message line taken.
const MAX_LINE: usize = 4096;
/// Largest message taken.
const MAX_MESSAGE: usize = 10 << 20;

/// A running mailbox.
pub struct Mailbox {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where messages are written, one `.eml` file each.
    pub dir: PathBuf,
}

/// Starts a mailbox on `127.0.0.1:0` keeping messages under `dir`, until `shutdown`.
pub async fn start(dir: &Path, shutdown: CancellationToken) -> std::io::Result<Mailbox> {
    std::fs::create_dir_all(dir)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dir = dir.to_path_buf();
    let count = Arc::new(AtomicU64::new(0));
    let kept = dir.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "dev mailbox: accept failed");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let (dir, count) = (kept.clone(), count.clone());
            tokio::spawn(async move {
                if let Err(e) = session(stream, &dir, &count).await {
                    tracing::debug!(error = %e, "dev mailbox: session ended");
                }
            });
        }
    });
    Ok(Mailbox { addr, dir })
}

/// One SMTP session.
async fn session(stream: TcpStream, dir: &Path, count: &AtomicU64) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 selvage-dev mailbox ESMTP\r\n").await?;
    let mut rcpt: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(&mut read, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end().to_ascii_uppercase();
        let verb = command.split_whitespace().next().unwrap_or_default();
        let reply: &[u8] = match verb {
            "EHLO" => b"250-selvage-dev\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n",
            "HELO" | "NOOP" => b"250 OK\r\n",
            "MAIL" => {
                rcpt.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                let to = text.trim_end().split_once(':').map(|(_, a)| a.trim().trim_matches(['<', '>']).to_string());
                rcpt.push(to.unwrap_or_default());
                b"250 OK\r\n"
            }
            "RSET" => {
                rcpt.clear();
                b"250 OK\r\n"
            }
            "DATA" if rcpt.is_empty() => b"503 RCPT first\r\n",
            "DATA" => {
                write.write_all(b"354 End with <CRLF>.<CRLF>\r\n").await?;
                let Some(message) = read_message(&mut read, &mut line).await? else {
                    write.write_all(b"552 Message too large\r\n").await?;
                    return Ok(());
                };
                let n = count.fetch_add(1, Ordering::Relaxed);
                let path = dir.join(format!("{}-{n}.eml", selvage_origin::now_ms()));
                tokio::fs::write(&path, &message).await?;
                tracing::info!(to = %rcpt.join(", "), path = %path.display(), "dev mailbox: email kept");
                rcpt.clear();
                b"250 OK: kept\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 Command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// Reads one line (CRLF or LF ended) into `line`; `false` at the end of the stream. A line
/// past [`MAX_LINE`] is an error.
async fn read_line<R: AsyncBufReadExt + Unpin>(read: &mut R, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let n = (&mut *read).take(MAX_LINE as u64 + 1).read_until(b'\n', line).await?;
    if n > MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n > 0)
}

/// Reads a message's lines up to the lone `.`, undoing dot-stuffing; `None` past
/// [`MAX_MESSAGE`].
async fn read_message<R: AsyncBufReadExt + Unpin>(
    read: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    loop {
        if !read_line(read, line).await? {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the message did not end"));
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(Some(message));
        }
        let body = line.strip_prefix(b".").filter(|rest| rest.starts_with(b".")).unwrap_or(line);
        message.extend_from_slice(body);
        if message.len() > MAX_MESSAGE {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_handed_over_smtp_is_kept_as_a_file_dots_unstuffed() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let mailbox = start(dir.path(), shutdown.clone()).await.unwrap();
        let stream = TcpStream::connect(mailbox.addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut expect = async |code: &str| {
            let line = lines.next_line().await.unwrap().unwrap();
            assert!(line.starts_with(code), "{line}");
            line
        };
        expect("220").await;
        write.write_all(b"EHLO test\r\n").await.unwrap();
        while expect("250").await.starts_with("250-") {}
        write.write_all(b"DATA\r\n").await.unwrap();
        expect("503").await;
        write.write_all(b"MAIL FROM:<a@x.invalid>\r\nRCPT TO:<alice@demo.invalid>\r\nDATA\r\n").await.unwrap();
        expect("250").await;
        expect("250").await;
        expect("354").await;
        write.write_all(b"Subject: hi\r\n\r\n..a dot\r\nbody\r\n.\r\nQUIT\r\n").await.unwrap();
        expect("250").await;
        expect("221").await;
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "Subject: hi\r\n\r\n.a dot\r\nbody\r\n");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_notifiers_smtp_client_hands_a_digest_over() {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let mailbox = start(dir.path(), shutdown.clone()).await.unwrap();
        // As `notify.smtp_url` is read: the URL `selvage dev` sets.
        let smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(&format!("smtp://{}", mailbox.addr)).unwrap().build();
        let mail = Message::builder()
            .from("Selvage <notifications@selvage.invalid>".parse().unwrap())
            .to("alice@demo.invalid".parse().unwrap())
            .subject("2 unread")
            .body(".starts with a dot\nand goes on".to_string())
            .unwrap();
        smtp.send(mail).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        let kept = std::fs::read_to_string(&files[0]).unwrap();
        assert!(kept.contains("Subject: 2 unread") && kept.contains("To: alice@demo.invalid"), "{kept}");
        assert!(kept.contains("\r\n.starts with a dot"), "unstuffed: {kept}");
        shutdown.cancel();
    }
}
