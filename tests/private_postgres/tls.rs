//! TLS to PostgreSQL for real: a private instance with `ssl = on` and a certificate for
//! 127.0.0.1 signed by a CA made here with the `openssl` command, and servers started
//! on it in each `postgres_sslmode`. Payloads stay in memory: these tests need the
//! PostgreSQL binaries and `openssl`, not S3.

use std::path::{Path, PathBuf};
use std::process::Command;

use grainstore::config::{Backend, Config, Overrides};
use grainstore::server::Server;
use grainstore::store::postgres::SslMode;
use reqwest::StatusCode;
use tokio_postgres::NoTls;

use crate::helpers::*;
use crate::instance::{PrivatePostgres, find_bindir};

/// A CA, another CA that signed nothing of the server's, and the server's certificate
/// (for the IP address 127.0.0.1 only) and key.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Made with `openssl`, or `Err` saying why not.
    fn make() -> Result<Pki, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let openssl = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for name in ["ca", "other-ca"] {
            let (key, crt, subject) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN=grainstore test {name}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args)?;
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=grainstore test database",
        ]);
        openssl(&args)?;
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n\
             basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n",
        )
        .map_err(|e| e.to_string())?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ])?;
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("a file openssl wrote")
    }
}

/// The configuration of a server on `url` in `mode` with the CA file `ca`, payloads
/// in memory, data directory `data`.
fn config(data: &Path, url: &str, mode: SslMode, ca: Option<&Path>) -> Config {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data.to_path_buf()),
    };
    let mut config =
        Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
    let s = &mut config.storage;
    s.backend = Backend::Postgres;
    s.postgres_url = url.to_owned();
    s.postgres_schema = "grainstore".into();
    s.object_store_url = "memory://".into();
    s.postgres_sslmode = mode;
    s.postgres_sslrootcert = ca.map(Path::to_path_buf).unwrap_or_default();
    s.max_sessions = s.postgres_pool_size - 2;
    config
}

/// Starts a server in `mode`; `Err` is the start's error message.
async fn start(url: &str, mode: SslMode, ca: Option<&Path>) -> Result<TestServer, String> {
    let data = tempfile::tempdir().expect("temp dir");
    // The start's error is what an operator would read; a success is served by the
    // helpers' server, started the same way.
    match Server::bind(config(data.path(), url, mode, ca)).await {
        Err(e) => Err(e.to_string()),
        Ok(server) => {
            drop(server);
            let ca = ca.map(Path::to_path_buf);
            Ok(spawn_server(move |c| {
                let data_dir = c.storage.data_dir.clone();
                *c = config(&data_dir, url, mode, ca.as_deref());
            })
            .await)
        }
    }
}

/// Whether every connection grainstore holds to `pg` is encrypted (`Some(true)`), none
/// is (`Some(false)`), or there is a mix (`None`).
async fn grainstore_connections_use_tls(pg: &PrivatePostgres) -> Option<bool> {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect to the private instance");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'grainstore'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all > 0, "grainstore holds no connection");
    match encrypted {
        0 => Some(false),
        e if e == all => Some(true),
        _ => None,
    }
}

/// A flow, a few grains written and read back: the server works over its connections.
async fn works(server: &TestServer) {
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..3, 2000);
    server.post(flow, &written).await;
    let response = server
        .get(&format!("/flows/{flow}/grains"), "application/x-ndjson")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    let got: Vec<_> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| grainstore::grain::Grain::from_json(line).expect("a grain"))
        .collect();
    assert_same_grains(&got, &written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sslmode_against_a_server_with_a_certificate_of_its_own_ca() {
    let bindir = match find_bindir() {
        Ok(dir) => dir,
        Err(why) => return eprintln!("postgres tls: skipped: {why}"),
    };
    let pki = match Pki::make() {
        Ok(pki) => pki,
        Err(why) => return eprintln!("postgres tls: skipped: no certificates: {why}"),
    };
    let (crt, key) = (pki.read("server.crt"), pki.read("server.key"));
    let pg = tokio::task::block_in_place(|| {
        PrivatePostgres::create(
            bindir,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            &[("server.crt", &crt), ("server.key", &key)],
        )
    });
    let url = pg.url();
    let (ca, other_ca) = (pki.path("ca.crt"), pki.path("other-ca.crt"));

    // The certificate chain and the host name checked.
    let server = start(&url, SslMode::VerifyFull, Some(&ca))
        .await
        .expect("verify-full with the CA that signed the server's certificate");
    works(&server).await;
    assert_eq!(grainstore_connections_use_tls(&pg).await, Some(true));
    drop(server);

    // A CA that did not sign it: the start fails, naming the setting.
    let err = start(&url, SslMode::VerifyFull, Some(&other_ca))
        .await
        .err()
        .expect("verify-full with another CA must not start");
    assert!(err.contains("storage.postgres_sslrootcert"), "{err}");
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");

    // The certificate names 127.0.0.1, not localhost: verify-full refuses it there,
    // verify-ca (the chain only) accepts it.
    let localhost = url.replace("127.0.0.1", "localhost");
    let err = start(&localhost, SslMode::VerifyFull, Some(&ca))
        .await
        .err()
        .expect("verify-full must check the host name");
    assert!(err.contains("storage.postgres_sslmode"), "{err}");
    let server = start(&localhost, SslMode::VerifyCa, Some(&ca))
        .await
        .expect("verify-ca does not check the host name");
    works(&server).await;
    drop(server);
    let err = start(&localhost, SslMode::VerifyCa, Some(&other_ca))
        .await
        .err()
        .expect("verify-ca checks the chain");
    assert!(err.contains("storage.postgres_sslrootcert"), "{err}");

    // Encrypted without a CA file (the certificate is not checked).
    for mode in [SslMode::Require, SslMode::Prefer] {
        let server = start(&url, mode, None)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        works(&server).await;
        assert_eq!(
            grainstore_connections_use_tls(&pg).await,
            Some(true),
            "{mode}"
        );
        drop(server);
    }

    // Plain TCP.
    let server = start(&url, SslMode::Disable, None).await.expect("disable");
    works(&server).await;
    assert_eq!(grainstore_connections_use_tls(&pg).await, Some(false));
}
