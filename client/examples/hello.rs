//! Connects to an edge, prints the session's `hello`, sends a message if a channel is given,
//! then prints events as they arrive until Ctrl-C (reconnecting, resumed, on `goodbye`).
//!
//! ```sh
//! cargo run -p selvage-client --example hello -- ws://127.0.0.1:7800 svt_… [CHANNEL_ID]
//! ```
//!
//! The edge URL is what `selvage dev` prints: `ws://HOST:PORT` (JSON; a path and query after it
//! are ignored, except `format=msgpack`), or `quic://HOST:PORT?fingerprint=HEX` for QUIC pinned
//! to the edge's certificate. A bare `HOST:PORT` means WebSocket with JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use selvage_client::{Client, ConnectOptions, Inbound, Transport};
use selvage_shared::{ChannelId, Event};

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, token, channel) = match args.as_slice() {
        [url, token] => (url, token, None),
        [url, token, channel] => (url, token, Some(channel)),
        _ => return Err("usage: hello <edge url> <token> [channel]".into()),
    };
    let (transport, addr) = parse_edge_url(url)?;
    let mut client = Client::connect(ConnectOptions::new(transport, addr, token.as_str())).await?;

    let hello = client.hello();
    println!(
        "connected as @{} ({}), session {}, {} channels, {} users, heartbeat {} ms",
        hello.self_user.handle,
        hello.self_user.id,
        hello.session_id,
        hello.channels.len(),
        hello.users.len(),
        hello.heartbeat_ms
    );
    for boot in &hello.channels {
        println!("  #{:<24} {} last {:>5}, {} unread", boot.channel.name, boot.channel.id, boot.last_seq, boot.unread);
    }

    if let Some(channel) = channel {
        let channel = ChannelId::parse(channel).ok_or("not a channel id")?;
        // A fresh id per run; retrying a send with the same id would get the same message back.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let ack = client.send(&channel, "hello from selvage-client", &format!("hello-{nanos}"), None).await?;
        println!("sent: {} seq {} (durable)", ack.channel, ack.seq);
    }

    println!("waiting for events; Ctrl-C to stop");
    loop {
        let inbound = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            inbound = client.next_event(Duration::from_secs(60)) => inbound?,
        };
        match inbound {
            // Nothing for a minute: keep waiting (the client's heartbeats keep the session up).
            None => continue,
            Some(Inbound::Event(frame)) => match &frame.event {
                Event::Message(m) => println!("{} #{} {}: {}", m.seq, m.channel, m.user, m.text),
                other => println!("{}: {other:?}", other.kind()),
            },
            Some(Inbound::Goodbye { reconnect_in_ms }) => {
                println!("the edge is draining: reconnecting in {reconnect_in_ms} ms");
                client = client.reconnect(Duration::from_millis(reconnect_in_ms)).await?;
                println!("resumed: {}", client.hello().resumed);
            }
            Some(Inbound::Resync { reason }) => println!("resync ({reason}): the next connection boots afresh"),
            Some(Inbound::Error { code, message }) => println!("error {code}: {message}"),
            Some(Inbound::Closed { code, reason }) => {
                println!("closed ({code:?}): {reason}");
                return Ok(());
            }
        }
    }
    client.close().await;
    Ok(())
}

/// The transport and `host:port` an edge URL names.
fn parse_edge_url(url: &str) -> Result<(Transport, String), Error> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let (authority, query) = match rest.split_once(['/', '?']) {
        Some((authority, _)) => (authority, rest.split_once('?').map_or("", |(_, q)| q)),
        None => (rest, ""),
    };
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|v| v.strip_prefix('=')).map(str::to_owned))
    };
    let transport = match scheme {
        "ws" if param("format").as_deref() == Some("msgpack") => Transport::WsMsgpack,
        "ws" => Transport::WsJson,
        "quic" => Transport::quic_pinned(param("fingerprint").ok_or("a quic:// URL needs ?fingerprint=HEX")?),
        other => return Err(format!("unsupported scheme {other:?}: use ws:// or quic://").into()),
    };
    Ok((transport, authority.to_owned()))
}
