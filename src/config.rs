//! Layered configuration: defaults, then a TOML file, then `SELVAGE_*` environment variables,
//! then command-line flags — validated before anything starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use selvage_origin::{config::StoreKind, OriginConfig};
use serde::Serialize;

/// `selvage origin` arguments.
#[derive(Args)]
pub struct OriginArgs {
    /// TOML configuration file (see infra/origin.example.toml for every field).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Load and check the configuration as a start would (files it reads included, without
    /// binding ports or opening the store), print `ok: …` or every problem, and exit: 0 when
    /// valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub flags: OriginFlags,
}

/// Flags that override the file and the environment.
#[derive(Args, Serialize, Default)]
pub struct OriginFlags {
    /// Address of the HTTP API and metrics [default: 127.0.0.1:7700].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// Storage engine: embedded or fdb [default: embedded].
    #[arg(long, value_parser = parse_store)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreKind>,
    /// Data directory of the embedded store [default: ./selvage-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// FoundationDB cluster file [default: FoundationDB's default].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fdb_cluster_file: Option<PathBuf>,
    /// Key that authorizes workspace creation (prefer SELVAGE_OPERATOR_KEY or the file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<String>,
}

fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "embedded" => Ok(StoreKind::Embedded),
        "fdb" => Ok(StoreKind::Fdb),
        _ => Err(format!("unknown store {s:?}: use embedded or fdb")),
    }
}

/// The top-level field names of a config, so only `SELVAGE_*` variables meant for it are read
/// (others, like SELVAGE_TOKEN for `selvage admin`, are not configuration errors).
fn fields_of<T: Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Builds the origin's configuration from its layers and validates it.
pub fn load_origin(file: Option<&Path>, flags: &OriginFlags) -> Result<OriginConfig> {
    let config = layered_origin(file, flags).context("invalid origin configuration")?;
    config.validate().map_err(|e| anyhow::anyhow!("invalid origin configuration: {e}"))?;
    Ok(config)
}

/// The origin's configuration from its layers, unchecked.
fn layered_origin(file: Option<&Path>, flags: &OriginFlags) -> Result<OriginConfig, Problems> {
    let figment = layers(Serialized::defaults(OriginConfig::default()), file, fields_of::<OriginConfig>())?;
    figment.merge(Serialized::defaults(flags)).extract().map_err(Problems::from)
}

/// Defaults, then `file`, then the `SELVAGE_*` variables naming one of `fields`.
fn layers(defaults: impl figment::Provider, file: Option<&Path>, fields: Vec<String>) -> Result<Figment, Problems> {
    let mut figment = Figment::from(defaults);
    if let Some(file) = file {
        if !file.exists() {
            return Err(Problems(vec![format!("config file {} does not exist", file.display())]));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed("SELVAGE_").split("__").filter(move |key| {
        let key = key.as_str().to_ascii_lowercase();
        fields.iter().any(|f| key == *f || key.starts_with(&format!("{f}__")) || key.starts_with(&format!("{f}.")))
    });
    Ok(figment.merge(env))
}

/// What is wrong with a configuration's layers: each error figment found (a file that does not
/// parse, an unknown field, a value of the wrong type), each naming its field and layer.
#[derive(Debug)]
struct Problems(Vec<String>);

impl From<figment::Error> for Problems {
    fn from(error: figment::Error) -> Self {
        Problems(error.into_iter().map(|e| e.to_string()).collect())
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for Problems {}

/// `selvage origin --check-config`: a summary of the configuration, or every problem found
/// (see [`OriginConfig::problems`] and [`OriginConfig::start_problems`]).
pub fn check_origin(file: Option<&Path>, flags: &OriginFlags) -> Result<String, Vec<String>> {
    let config = layered_origin(file, flags).map_err(|p| p.0)?;
    let mut problems = config.problems();
    problems.extend(config.start_problems());
    if !problems.is_empty() {
        return Err(problems);
    }
    let store = match config.store {
        StoreKind::Embedded => format!("embedded store in {}", config.data_dir.display()),
        StoreKind::Fdb => "FoundationDB store".to_string(),
    };
    let link = match &config.link.edge_key {
        Some(_) => format!("edge link on {}", config.link.listen),
        None => "edge link off (no link.edge_key)".to_string(),
    };
    let on = |b: bool| if b { "on" } else { "off" };
    Ok(format!(
        "origin on {}, {store}, {link}, operator key {}, files {}, search {}, notify {}",
        config.listen,
        if config.operator_key.is_some() { "set" } else { "unset" },
        on(config.files.enabled),
        on(config.search.enabled),
        on(config.notify.enabled),
    ))
}

/// `selvage edge` arguments.
#[derive(Args)]
pub struct EdgeArgs {
    /// TOML configuration file (see infra/edge.example.toml for every field).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Load and check the configuration as a start would (certificate files included, without
    /// binding ports or reaching the origin), print `ok: …` or every problem, and exit: 0 when
    /// valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub flags: EdgeFlags,
}

/// Flags that override the file and the environment.
#[derive(Args, Serialize, Default)]
pub struct EdgeFlags {
    /// Address of the WebSocket endpoint, metrics and health [default: 127.0.0.1:7800].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// UDP address of the client QUIC endpoint [default: 127.0.0.1:7801].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic_listen: Option<std::net::SocketAddr>,
    /// Name of this edge in logs and the origin's metrics [default: edge-1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    /// The origin's link: host:port, fingerprint and shared key.
    #[command(flatten)]
    #[serde(skip_serializing_if = "OriginLinkFlags::is_empty")]
    pub origin: OriginLinkFlags,
}

/// Flags of the edge's `origin` section.
#[derive(Args, Serialize, Default)]
pub struct OriginLinkFlags {
    /// host:port of the origin's QUIC link [default: 127.0.0.1:7701].
    #[arg(long = "origin-link")]
    #[serde(rename = "link", skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// SHA-256 fingerprint of the origin's link certificate, as `selvage origin` prints it.
    #[arg(long = "origin-fingerprint")]
    #[serde(rename = "fingerprint", skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The link's shared secret (prefer SELVAGE_ORIGIN__EDGE_KEY or the file).
    #[arg(long = "origin-edge-key")]
    #[serde(rename = "edge_key", skip_serializing_if = "Option::is_none")]
    pub edge_key: Option<String>,
}

impl OriginLinkFlags {
    fn is_empty(&self) -> bool {
        self.link.is_none() && self.fingerprint.is_none() && self.edge_key.is_none()
    }
}

/// Builds the edge's configuration from its layers and validates it.
pub fn load_edge(file: Option<&Path>, flags: &EdgeFlags) -> Result<selvage_edge::EdgeConfig> {
    let config = layered_edge(file, flags).context("invalid edge configuration")?;
    config.validate().map_err(|e| anyhow::anyhow!("invalid edge configuration: {e}"))?;
    Ok(config)
}

/// The edge's configuration from its layers, unchecked.
fn layered_edge(file: Option<&Path>, flags: &EdgeFlags) -> Result<selvage_edge::EdgeConfig, Problems> {
    use selvage_edge::EdgeConfig;
    let figment = layers(Serialized::defaults(EdgeConfig::default()), file, fields_of::<EdgeConfig>())?;
    figment.merge(Serialized::defaults(flags)).extract().map_err(Problems::from)
}

/// `selvage edge --check-config`: a summary of the configuration, or every problem found (see
/// [`selvage_edge::EdgeConfig::problems`] and [`selvage_edge::EdgeConfig::start_problems`]).
pub fn check_edge(file: Option<&Path>, flags: &EdgeFlags) -> Result<String, Vec<String>> {
    let config = layered_edge(file, flags).map_err(|p| p.0)?;
    let mut problems = config.problems();
    problems.extend(config.start_problems());
    if !problems.is_empty() {
        return Err(problems);
    }
    let quic = match config.quic_listen {
        Some(addr) => format!("QUIC on {addr}"),
        None => "QUIC off".to_string(),
    };
    let trust = match (&config.origin.fingerprint, &config.origin.ca_file) {
        (Some(_), _) => "pinned by fingerprint",
        _ => "checked against origin.ca_file",
    };
    Ok(format!(
        "edge {} on {}, {quic}, origin link {} ({trust}), web client {}",
        config.edge_id,
        config.listen,
        config.origin.link,
        if config.web.enabled { "on" } else { "off" },
    ))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its large error type
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "o.toml",
                "listen = \"127.0.0.1:9000\"\ndata_dir = \"from-file\"\n[sequencer]\nqueue_capacity = 7\n",
            )?;
            jail.set_env("SELVAGE_DATA_DIR", "from-env");
            jail.set_env("SELVAGE_TOKEN", "not-a-config-field");
            let flags = OriginFlags { listen: Some("127.0.0.1:9100".parse().unwrap()), ..Default::default() };
            let c = load_origin(Some(Path::new("o.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9100, "flag beats file");
            assert_eq!(c.data_dir, PathBuf::from("from-env"), "env beats file");
            assert_eq!(c.sequencer.queue_capacity, 7, "file beats default");
            Ok(())
        });
    }

    #[test]
    fn link_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SELVAGE_LINK__EDGE_KEY", "edge-key-from-the-environment");
            jail.set_env("SELVAGE_LINK__LISTEN", "127.0.0.1:0");
            let c = load_origin(None, &OriginFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.link.edge_key.as_deref(), Some("edge-key-from-the-environment"));
            assert_eq!(c.link.listen.port(), 0);
            jail.set_env("SELVAGE_LINK__CERT_FILE", "cert.pem");
            let err = load_origin(None, &OriginFlags::default()).unwrap_err();
            assert!(format!("{err:#}").contains("link.key_file"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn files_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let c = load_origin(None, &OriginFlags::default()).map_err(|e| e.to_string())?;
            assert!(!c.files.enabled, "files are off for `selvage origin` unless configured");
            jail.set_env("SELVAGE_FILES__ENABLED", "true");
            jail.set_env("SELVAGE_FILES__ENDPOINT", "http://127.0.0.1:7900");
            jail.set_env("SELVAGE_FILES__PATH_STYLE", "true");
            jail.set_env("SELVAGE_FILES__DOWNLOAD_URL_SECS", "60");
            let c = load_origin(None, &OriginFlags::default()).map_err(|e| e.to_string())?;
            assert!(c.files.enabled && c.files.path_style);
            assert_eq!(c.files.endpoint.as_deref(), Some("http://127.0.0.1:7900"));
            assert_eq!(c.files.download_url_secs, 60);
            jail.set_env("SELVAGE_FILES__ACCESS_KEY_ID", "only-the-key");
            let err = load_origin(None, &OriginFlags::default()).unwrap_err();
            assert!(format!("{err:#}").contains("files.secret_access_key"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn the_example_configs_load_as_they_are() {
        // In a jail like the tests that set `SELVAGE_*` variables: jails run one at a time, so
        // none of their variables leaks into this load.
        figment::Jail::expect_with(|_jail| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let origin = load_origin(Some(&root.join("infra/origin.example.toml")), &OriginFlags::default()).unwrap();
            assert_eq!(origin.link.presence_lease_ms, 30_000);
            assert_eq!(origin.files.max_bytes, 100 * 1024 * 1024);
            let edge = load_edge(Some(&root.join("infra/edge.example.toml")), &EdgeFlags::default());
            // The edge example leaves the origin's fingerprint and key to the environment; every
            // field it does set must parse and pass validation up to those.
            if let Err(e) = edge {
                let e = format!("{e:#}");
                assert!(e.contains("edge_key") || e.contains("fingerprint"), "{e}");
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listn = \"127.0.0.1:9000\"\n")?;
            let err = load_origin(Some(Path::new("bad.toml")), &OriginFlags::default()).unwrap_err();
            assert!(format!("{err:#}").contains("listn"), "{err:#}");
            jail.create_file("short.toml", "operator_key = \"abc\"\n")?;
            let err = load_origin(Some(Path::new("short.toml")), &OriginFlags::default()).unwrap_err();
            assert!(format!("{err:#}").contains("operator_key"), "{err:#}");
            Ok(())
        });
    }
}
