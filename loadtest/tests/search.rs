//! `selvage loadtest search` at a tiny scale: the report is complete and its checks hold — every
//! message sent is indexed, searches are answered and find messages, no hit is in a channel the
//! searcher may not read — for Selvage and, when PostgreSQL 15 is installed, for the peer in a
//! throwaway cluster on a loopback port (skipped, saying why, when it is not).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use selvage_loadtest::search::{measure, SearchArgs};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
struct Throwaway {
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server's programs as `postgres`: initdb refuses root.
    as_postgres: bool,
}

impl Throwaway {
    fn start() -> Result<Throwaway, String> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            return Err(format!("no {PG_BIN}/initdb (Debian's postgresql-15)"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres").arg(dir.path()).status().map(|s| s.success());
            if !matches!(ok, Ok(true)) {
                return Err("running as root, and cannot hand a directory to the user postgres".into());
            }
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let cluster = Throwaway { dir, port, as_postgres };
        let data = cluster.data();
        cluster.pg(&["initdb", "-D", &data, "-A", "trust", "-U", "postgres"])?;
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c jit=off", cluster.dir.path().display());
        let log = cluster.dir.path().join("log").display().to_string();
        cluster.pg(&["pg_ctl", "-D", &data, "-o", &options, "-l", &log, "-w", "start"])?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, args: &[&str]) -> Result<(), String> {
        let program = PathBuf::from(PG_BIN).join(args[0]);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command.args(&args[1..]).output().map_err(|e| format!("{}: {e}", program.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", args[0], String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }

    fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.pg(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_indexes_everything_and_finds_only_readable_messages() {
    let peer = match Throwaway::start() {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("PostgreSQL part skipped: {why}");
            None
        }
    };
    let args = SearchArgs {
        messages: 2_000,
        channels: 40,
        member_of: 5,
        users: 20,
        seed: 5,
        send_concurrency: 64,
        batch_size: None,
        writer_memory_mib: 16,
        writer_threads: 1,
        search_concurrency: 0,
        searchers: 4,
        duration: Duration::from_secs(2),
        queries: 40,
        postgres: peer.as_ref().map(Throwaway::conninfo),
        postgres_config: "english".into(),
        data_dir: None,
        json: true,
    };
    let report = measure(&args).await.unwrap();

    assert_eq!(report.load.sent, 2_000);
    assert_eq!(report.indexing.indexed, 2_000, "every message sent is indexed");
    assert!(report.indexing.index_bytes > 0);
    // The searcher's five private channels and #general.
    assert_eq!(report.readable_channels, 6);
    let q = &report.queries;
    assert_eq!(q.failed, 0, "{:?}", q.first_error);
    assert!(q.answered > 0 && q.hits > 0, "{q:?}");
    assert_eq!(q.forbidden_hits, 0, "a hit in a channel the searcher may not read");
    assert!(q.by_kind.len() == 8, "every kind of query ran: {:?}", q.by_kind.keys());
    assert!(q.by_kind["cjk"].mean_hits > 0.0, "CJK words are found");
    assert!(q.by_kind["phrase"].mean_hits > 0.0, "phrases taken from messages are found");
    assert!(q.by_kind["prefix"].mean_hits > 0.0, "words being typed are found");

    match &report.postgres {
        Some(p) => {
            assert_eq!(p.rows, 2_000);
            assert!(p.gin_bytes > 0 && p.total_bytes > p.gin_bytes);
            assert_eq!(p.queries.failed, 0, "{:?}", p.queries.first_error);
            assert!(p.queries.answered > 0 && p.queries.hits > 0, "{:?}", p.queries);
            assert_eq!(p.queries.forbidden_hits, 0);
            let ratios = report.ratios.as_ref().unwrap();
            assert!(ratios.query_throughput > 0.0 && ratios.indexing > 0.0);
        }
        None => assert!(report.postgres_skipped.is_some()),
    }
}
