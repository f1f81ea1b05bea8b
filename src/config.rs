//! The service's configuration: `config/default.toml`, then an optional `--config FILE`,
//! then `GRAINSTORE__SECTION__KEY` environment variables, then command-line flags.
//!
//! The defaults are compiled into the binary so that it runs from any directory; the
//! file in the repository is the documented copy of the same text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The compiled-in defaults; every key is documented there.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The keys whose values are lists of strings: an environment variable gives one as a
/// comma-separated list (`GRAINSTORE__CORS__ALLOWED_ORIGINS=https://a.example,https://b.example`;
/// empty for none). The tables of `[[auth.tokens]]` come from files only.
const LIST_KEYS: &[&str] = &[
    "cors.allowed_origins",
    "auth.jwt.algorithms",
    "auth.jwt.audience",
    "auth.jwt.issuer",
];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a key has an unknown name or a wrong type.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// A key parsed but its value is not acceptable.
    #[error("invalid configuration: key `{key}`: {reason}")]
    Value {
        /// The dotted key, e.g. `storage.backend`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration of a running service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the HTTP server listens.
    pub server: ServerConfig,
    /// Where grains are stored.
    pub storage: StorageConfig,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Live streams.
    pub live: LiveConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// How the service logs.
    pub log: LogConfig,
    /// Who may call the API.
    pub auth: AuthConfig,
}

/// A secret from the configuration: never shown by `Debug`, so a logged configuration
/// cannot leak it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request is allowed (a development or trusted-network setting).
    None,
    /// Static bearer tokens from the configuration.
    Token,
    /// Signed JSON Web Tokens.
    Jwt,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `token` or `jwt`.
    pub mode: AuthMode,
    /// The realm named in `WWW-Authenticate`.
    pub realm: String,
    /// The names of the four scopes, as they appear in tokens.
    pub scopes: ScopeNames,
    /// Static tokens (mode `token`).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A TOML file of more `[[tokens]]`, so that secrets need not be in the main
    /// configuration; empty for none.
    pub tokens_file: PathBuf,
    /// Signed tokens (mode `jwt`).
    pub jwt: JwtConfig,
}

/// The names of the scopes (`[auth.scopes]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeNames {
    /// Reading flows, sources, grains, live streams and metrics.
    pub read: String,
    /// Creating and updating flows, writing grains.
    pub write: String,
    /// Deleting flows and grains.
    pub delete: String,
    /// Every scope at once.
    pub admin: String,
}

/// One static token (`[[auth.tokens]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and per-credential limits (never the token itself).
    #[serde(default)]
    pub name: String,
    /// The token itself; or give `token_sha256`.
    #[serde(default)]
    pub token: Secret,
    /// The SHA-256 of the token, in hex, so the configuration need not hold the token.
    #[serde(default)]
    pub token_sha256: String,
    /// The scopes the token grants.
    pub scopes: Vec<String>,
}

/// The `[auth.jwt]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The accepted signature algorithms: `HS256`, `RS256`, `ES256`.
    pub algorithms: Vec<String>,
    /// The shared secret of HS256; prefer `hs256_secret_file` or the environment.
    pub hs256_secret: Secret,
    /// A file holding the HS256 secret (trailing newline ignored); empty for none.
    pub hs256_secret_file: PathBuf,
    /// A PEM file with the public key of RS256 or ES256; empty for none.
    pub public_key_file: PathBuf,
    /// Accepted `aud` values; a token must name one of them. Empty: `aud` not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values. Empty: `iss` not checked.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// The `[limits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest grain payload accepted, in bytes.
    pub max_grain_bytes: usize,
    /// The largest JSON request body, in bytes.
    pub max_json_body_bytes: usize,
    /// The most grains one request may write; 0 for no limit.
    pub max_grains_per_request: u64,
    /// The `limit` of a listing when the client gives none.
    pub default_page_limit: usize,
    /// The largest `limit` of a listing.
    pub max_page_limit: usize,
}

/// The `[live]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Payloads up to this size are inline in SSE events.
    pub inline_max_bytes: usize,
    /// Seconds between keep-alive comments.
    pub keepalive_secs: u64,
    /// The `retry:` suggested to SSE clients, in milliseconds.
    pub retry_ms: u64,
    /// Service events retained for resumption.
    pub event_retention: usize,
    /// Live streams (SSE, `follow=true` reads, `/events`) open at once in total.
    pub max_streams: usize,
    /// Live streams open at once per credential (not applied with `auth.mode = "none"`).
    pub max_streams_per_credential: usize,
    /// Recent grains a flow's fan-out keeps for SSE subscribers that are a little
    /// behind; one further behind reads from the store instead.
    pub fanout_capacity: usize,
    /// A subscriber that fell behind the fan-out's ring and has not caught up for this
    /// many seconds is closed (it resumes by `Last-Event-ID`); 0: never.
    pub max_lag_secs: u64,
}

/// The `[cors]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins; `*` allows any.
    pub allowed_origins: Vec<String>,
}

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How long graceful shutdown waits for in-flight requests, in milliseconds.
    pub shutdown_deadline_ms: u64,
    /// Time allowed to send request headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time allowed to reach response headers, in milliseconds.
    pub response_headers_timeout_ms: u64,
    /// Time an upload body may go without completing a grain, in milliseconds.
    pub body_idle_timeout_ms: u64,
    /// Time from an upload body's first pause to the start of the commit of what it
    /// staged, in milliseconds; 0 commits at once.
    pub commit_linger_ms: u64,
    /// Time a response may wait on a client that reads nothing, in milliseconds.
    pub send_stall_timeout_ms: u64,
    /// Requests served at once before shedding load.
    pub max_concurrent_requests: usize,
}

impl ServerConfig {
    /// The graceful-shutdown deadline.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
}

/// The directory under `storage.data_dir` of a replica's object cache.
pub const OBJECT_CACHE_DIR: &str = "object-cache";

impl Config {
    /// The PostgreSQL store's settings.
    pub fn postgres(&self) -> crate::store::postgres::PostgresConfig {
        let s = &self.storage;
        crate::store::postgres::PostgresConfig {
            url: s.postgres_url.clone(),
            ssl_mode: s.postgres_sslmode,
            ssl_root_cert: (!s.postgres_sslrootcert.as_os_str().is_empty())
                .then(|| s.postgres_sslrootcert.clone()),
            schema: s.postgres_schema.clone(),
            pool_size: s.postgres_pool_size,
            objects: crate::store::postgres::ObjectStoreConfig {
                url: s.object_store_url.clone(),
                s3_endpoint: s.s3_endpoint.clone(),
                s3_region: s.s3_region.clone(),
                s3_access_key_id: s.s3_access_key_id.clone(),
                s3_secret_access_key: s.s3_secret_access_key.clone(),
                s3_allow_http: s.s3_allow_http,
                s3_payload_signing: s.s3_payload_signing,
            },
            object_cache: (s.object_cache_bytes > 0)
                .then(|| (s.data_dir.join(OBJECT_CACHE_DIR), s.object_cache_bytes)),
            object_cache_uploads: s.object_cache_uploads,
            max_sessions: s.max_sessions,
            session_wait: Duration::from_millis(s.session_wait_ms),
            inline_max: s.inline_max_bytes,
            inline_batch_max: s.inline_batch_max_bytes,
            event_retention: self.live.event_retention,
            gc_grace: Duration::from_secs(s.gc_grace_secs),
            gc_interval: Duration::from_secs(s.gc_interval_secs),
            answer_within: Duration::from_millis(s.postgres_answer_timeout_ms),
        }
    }

    /// The embedded store's settings.
    pub fn embedded(&self) -> crate::store::embedded::EmbeddedConfig {
        crate::store::embedded::EmbeddedConfig {
            data_dir: self.storage.data_dir.clone(),
            max_sessions: self.storage.max_sessions,
            session_wait: Duration::from_millis(self.storage.session_wait_ms),
            inline_max: self.storage.inline_max_bytes,
            segment_bytes: self.storage.segment_bytes,
            event_retention: self.live.event_retention,
            index_cache_bytes: self.storage.index_cache_bytes,
            recent_grains_bytes: self.storage.recent_grains_bytes,
            min_free_bytes: self.storage.min_free_bytes,
        }
    }
}

/// Which store backend holds the grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `data_dir`, no server needed.
    Embedded,
    /// PostgreSQL (`postgres_url`) and an object store (`object_store_url`), shared by
    /// any number of replicas.
    Postgres,
}

/// The `[storage]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Which backend.
    pub backend: Backend,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Store sessions open at once.
    pub max_sessions: usize,
    /// How long a request waits for a free session, in milliseconds.
    pub session_wait_ms: u64,
    /// Payloads up to this size stay in the embedded index.
    pub inline_max_bytes: usize,
    /// Size of the embedded store's segment files.
    pub segment_bytes: u64,
    /// Memory for the embedded index's page cache.
    pub index_cache_bytes: usize,
    /// Memory for the embedded store's most recently committed small grains.
    pub recent_grains_bytes: usize,
    /// Free space kept on the embedded store's file system; writes are refused (507)
    /// below it.
    pub min_free_bytes: u64,
    /// PostgreSQL connection string (postgres backend), without TLS settings.
    pub postgres_url: String,
    /// TLS to PostgreSQL in libpq's `sslmode` words: `disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full` (postgres backend).
    pub postgres_sslmode: crate::store::postgres::SslMode,
    /// A PEM file of the CA certificates PostgreSQL's certificate must lead to; empty
    /// for none (postgres backend).
    pub postgres_sslrootcert: PathBuf,
    /// The schema holding grainstore's tables (postgres backend).
    pub postgres_schema: String,
    /// Connections in each replica's pool (postgres backend).
    pub postgres_pool_size: usize,
    /// Milliseconds PostgreSQL may take to hand over a working connection or answer a
    /// readiness check before requests fail with 503 (postgres backend).
    pub postgres_answer_timeout_ms: u64,
    /// Where payload objects go: `s3://bucket/prefix`, `file:///path` or `memory://`.
    pub object_store_url: String,
    /// S3 endpoint for S3-compatible services; empty for AWS.
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// S3 access key id; empty to take credentials from the `AWS_*` environment.
    pub s3_access_key_id: String,
    /// S3 secret access key.
    pub s3_secret_access_key: String,
    /// Whether an `http://` S3 endpoint is allowed.
    pub s3_allow_http: bool,
    /// Whether uploads' bodies are signed: `auto` (unsigned unless `s3_allow_http`),
    /// `signed` or `unsigned`.
    pub s3_payload_signing: crate::store::postgres::PayloadSigning,
    /// Bytes of payload objects a replica keeps in `data_dir/object-cache` (postgres
    /// backend); 0 for none.
    pub object_cache_bytes: u64,
    /// Whether the object cache also keeps the bytes this replica uploads (otherwise
    /// only those it reads).
    pub object_cache_uploads: bool,
    /// The most payload bytes an appending batch of small grains keeps in PostgreSQL
    /// (postgres backend); a larger one keeps them in its object.
    pub inline_batch_max_bytes: u64,
    /// Seconds an unreferenced payload object is kept before it is deleted.
    pub gc_grace_secs: u64,
    /// Seconds between garbage collections; 0 disables them.
    pub gc_interval_secs: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A tracing filter directive.
    pub filter: String,
}

/// Values from the command line that take precedence over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Loads the defaults, then `file` if given, then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars(), overrides)
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GRAINSTORE__"))
            .collect();
        // The lists of strings, which an environment variable gives comma-separated.
        let mut lists = Vec::new();
        for key in LIST_KEYS {
            let var = format!("GRAINSTORE__{}", key.replace('.', "__").to_uppercase());
            // Named in any case, as the other variables may be.
            let name = env.keys().find(|k| k.eq_ignore_ascii_case(&var)).cloned();
            if let Some(value) = name.and_then(|name| env.remove(&name)) {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                lists.push((*key, items));
            }
        }
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("GRAINSTORE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, items) in lists {
            builder = builder.set_override(key, items)?;
        }
        if let Some(listen) = overrides.listen {
            builder = builder.set_override("server.listen", listen.to_string())?;
        }
        if let Some(dir) = &overrides.data_dir {
            builder = builder.set_override("storage.data_dir", dir.to_string_lossy().as_ref())?;
        }
        let config: Config = builder.build()?.try_deserialize().map_err(with_words)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 14] = [
            (
                "server.send_stall_timeout_ms",
                self.server.send_stall_timeout_ms,
            ),
            ("live.max_streams", self.live.max_streams as u64),
            ("live.fanout_capacity", self.live.fanout_capacity as u64),
            (
                "live.max_streams_per_credential",
                self.live.max_streams_per_credential as u64,
            ),
            ("live.keepalive_secs", self.live.keepalive_secs),
            ("live.event_retention", self.live.event_retention as u64),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.response_headers_timeout_ms",
                self.server.response_headers_timeout_ms,
            ),
            (
                "server.body_idle_timeout_ms",
                self.server.body_idle_timeout_ms,
            ),
            (
                "server.max_concurrent_requests",
                self.server.max_concurrent_requests as u64,
            ),
            ("limits.max_grain_bytes", self.limits.max_grain_bytes as u64),
            (
                "limits.max_json_body_bytes",
                self.limits.max_json_body_bytes as u64,
            ),
            ("storage.max_sessions", self.storage.max_sessions as u64),
            ("storage.segment_bytes", self.storage.segment_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Value {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if self.limits.default_page_limit == 0
            || self.limits.default_page_limit > self.limits.max_page_limit
        {
            return Err(ConfigError::Value {
                key: "limits.default_page_limit",
                reason: format!(
                    "must be between 1 and limits.max_page_limit ({})",
                    self.limits.max_page_limit
                ),
            });
        }
        if self.limits.max_grain_bytes > crate::grain::MAX_PAYLOAD_LEN {
            return Err(ConfigError::Value {
                key: "limits.max_grain_bytes",
                reason: format!(
                    "must be at most {} (what GSF can carry)",
                    crate::grain::MAX_PAYLOAD_LEN
                ),
            });
        }
        if let Err(e) = crate::api::auth::Authenticator::new(&self.auth) {
            return Err(ConfigError::Value {
                key: e.key,
                reason: e.reason,
            });
        }
        if self.storage.backend == Backend::Postgres {
            self.validate_postgres()?;
        }
        if self
            .log
            .filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::Value {
                key: "log.filter",
                reason: format!("{:?} is not a tracing filter", self.log.filter),
            });
        }
        Ok(())
    }
}

/// What a key that takes words says of a value that is none of them.
type Words = fn(&str) -> String;

/// The keys whose values are the words of an enum, and what those words are.
const WORD_KEYS: &[(&str, Words)] = &[
    ("auth.mode", expected::<AuthMode>),
    ("storage.backend", expected::<Backend>),
    (
        "storage.postgres_sslmode",
        expected::<crate::store::postgres::SslMode>,
    ),
    (
        "storage.s3_payload_signing",
        expected::<crate::store::postgres::PayloadSigning>,
    ),
    ("log.format", expected::<LogFormat>),
];

/// What serde says of `value` as a `T`: for a word that is none of an enum's, "unknown
/// variant `value`, expected one of ...".
fn expected<T: serde::de::DeserializeOwned>(value: &str) -> String {
    use serde::de::IntoDeserializer;
    let words: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        value.into_deserializer();
    match T::deserialize(words) {
        Err(e) => e.to_string(),
        Ok(_) => format!("{value:?} is not accepted here"),
    }
}

/// The configuration crate's error for a word that is none of an enum's names the key
/// and the word only; this one lists the words the key takes.
fn with_words(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    if let Some((_, rest)) = text.split_once("does not have variant constructor ") {
        for (key, words) in WORD_KEYS {
            if let Some(value) = rest.strip_suffix(&format!(" for key `{key}`")) {
                return ConfigError::Value {
                    key,
                    reason: words(value),
                };
            }
        }
    }
    e.into()
}

impl Config {
    /// The postgres backend's keys: present, well-formed and consistent.
    fn validate_postgres(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        if s.gc_grace_secs < 60 {
            return Err(ConfigError::Value {
                key: "storage.gc_grace_secs",
                reason: "must be at least 60 (it must outlast uploads and read sessions)".into(),
            });
        }
        if !s.s3_access_key_id.is_empty() && s.s3_secret_access_key.is_empty() {
            return Err(ConfigError::Value {
                key: "storage.s3_secret_access_key",
                reason: "required when storage.s3_access_key_id is set".into(),
            });
        }
        if !s.s3_endpoint.is_empty() {
            // The URL parser drops surrounding spaces; object_store's requests do not.
            let endpoint = (s.s3_endpoint.trim() == s.s3_endpoint)
                .then(|| url::Url::parse(&s.s3_endpoint).ok())
                .flatten()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| ConfigError::Value {
                    key: "storage.s3_endpoint",
                    reason: format!(
                        "{:?} is not an http:// or https:// URL with a host (e.g. \
                         \"https://minio.internal:9000\")",
                        s.s3_endpoint
                    ),
                })?;
            if endpoint.scheme() == "http" && !s.s3_allow_http {
                return Err(ConfigError::Value {
                    key: "storage.s3_allow_http",
                    reason: format!("must be true for the http:// endpoint {:?}", s.s3_endpoint),
                });
            }
        }
        crate::store::postgres::check_settings(&self.postgres()).map_err(|e| {
            ConfigError::Value {
                key: match e.setting {
                    "url" => "storage.postgres_url",
                    "schema" => "storage.postgres_schema",
                    "sslmode" => "storage.postgres_sslmode",
                    "sslrootcert" => "storage.postgres_sslrootcert",
                    "answer_within" => "storage.postgres_answer_timeout_ms",
                    _ => "storage.object_store_url",
                },
                reason: e.reason,
            }
        })?;
        check_pool_size(s.max_sessions, s.postgres_pool_size)
    }
}

/// Refuses a postgres pool too small for the session limit: sessions could then hold
/// every connection and starve the work outside them (see
/// [`CONNECTIONS_BEYOND_SESSIONS`](crate::store::postgres::CONNECTIONS_BEYOND_SESSIONS)).
/// Refused, not clamped: both numbers size the database's `max_connections` and the
/// replica's capacity, so the operator chooses which one gives.
pub fn check_pool_size(max_sessions: usize, pool_size: usize) -> Result<(), ConfigError> {
    let beyond = crate::store::postgres::CONNECTIONS_BEYOND_SESSIONS;
    if max_sessions + beyond <= pool_size {
        return Ok(());
    }
    Err(ConfigError::Value {
        key: "storage.max_sessions",
        reason: format!(
            "{max_sessions} sessions do not fit storage.postgres_pool_size = {pool_size}: an \
             open read session holds a pooled connection, and {beyond} more are kept for the \
             work outside sessions (flow lookups, readiness checks, garbage collection); set \
             storage.max_sessions to at most {} or storage.postgres_pool_size to at least {}",
            pool_size.saturating_sub(beyond),
            max_sessions + beyond
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let config = Config::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.storage.backend, Backend::Embedded);
        assert_eq!(config.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn environment_then_flags_override() {
        let vars = env(&[
            ("GRAINSTORE__SERVER__LISTEN", "0.0.0.0:9000"),
            ("GRAINSTORE__STORAGE__DATA_DIR", "/srv/a"),
            ("GRAINSTORE__SERVER__SHUTDOWN_DEADLINE_MS", "250"),
        ]);
        let config = Config::load_from(None, vars.clone(), &Overrides::default()).unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            config.server.shutdown_deadline(),
            Duration::from_millis(250)
        );
        let flags = Overrides {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/srv/b".into()),
        };
        let config = Config::load_from(None, vars, &flags).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.storage.data_dir, PathBuf::from("/srv/b"));
    }

    #[test]
    fn lists_come_from_the_environment_comma_separated() {
        let vars = env(&[
            (
                "GRAINSTORE__CORS__ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("GRAINSTORE__AUTH__JWT__ALGORITHMS", "RS256"),
            ("GRAINSTORE__AUTH__JWT__AUDIENCE", ""),
            (
                "GRAINSTORE__AUTH__JWT__issuer",
                "https://idp.example/,other",
            ),
        ]);
        let config = Config::load_from(None, vars, &Overrides::default()).unwrap();
        assert_eq!(
            config.cors.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(config.auth.jwt.algorithms, ["RS256"]);
        assert!(config.auth.jwt.audience.is_empty());
        assert_eq!(config.auth.jwt.issuer, ["https://idp.example/", "other"]);
        // Over a file's lists.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[cors]\nallowed_origins = [\"https://file.example\"]\n",
        )
        .unwrap();
        let from_file = Config::load_from(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(from_file.cors.allowed_origins, ["https://file.example"]);
        let vars = env(&[("GRAINSTORE__CORS__ALLOWED_ORIGINS", "*")]);
        let config = Config::load_from(Some(&path), vars, &Overrides::default()).unwrap();
        assert_eq!(config.cors.allowed_origins, ["*"]);
        let vars = env(&[("GRAINSTORE__CORS__ALLOWED_ORIGINS", "")]);
        let config = Config::load_from(Some(&path), vars, &Overrides::default()).unwrap();
        assert!(config.cors.allowed_origins.is_empty(), "emptied");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[log]\nformat = \"json\"\n[server]\nshutdown_deadline_ms = 7\n",
        )
        .unwrap();
        let vars = env(&[("GRAINSTORE__LOG__FORMAT", "pretty")]);
        let config = Config::load_from(Some(&path), vars, &Overrides::default()).unwrap();
        assert_eq!(config.log.format, LogFormat::Pretty);
        assert_eq!(config.server.shutdown_deadline(), Duration::from_millis(7));
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "[log]\nformat = \"json\"\n").unwrap();
        let config = Config::load_from(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load_from(
            None,
            env(&[("GRAINSTORE__SERVER__LISTEN", "not-an-address")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = Config::load_from(
            None,
            env(&[("GRAINSTORE__STORAGE__BACKEND", "floppy")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.backend"), "{err}");
        assert!(err.contains("`embedded` or `postgres`"), "{err}");
        let err = Config::load_from(
            None,
            env(&[("GRAINSTORE__SERVER__LISTN", "1.2.3.4:5")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn a_word_that_is_none_of_a_keys_words_is_answered_with_them() {
        for (var, key, words) in [
            (
                "GRAINSTORE__AUTH__MODE",
                "auth.mode",
                "`none`, `token`, `jwt`",
            ),
            (
                "GRAINSTORE__LOG__FORMAT",
                "log.format",
                "`pretty` or `json`",
            ),
            (
                "GRAINSTORE__STORAGE__POSTGRES_SSLMODE",
                "storage.postgres_sslmode",
                "`verify-full`",
            ),
            (
                "GRAINSTORE__STORAGE__S3_PAYLOAD_SIGNING",
                "storage.s3_payload_signing",
                "`auto`, `signed`, `unsigned`",
            ),
        ] {
            let err = Config::load_from(None, env(&[(var, "maybe")]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains("unknown variant `maybe`"), "{err}");
            assert!(err.contains(words), "{err}");
        }
        // Every key listed takes words: none of them would accept any text.
        for (key, words) in WORD_KEYS {
            assert!(words("maybe").contains("unknown variant"), "{key}");
        }
    }

    #[test]
    fn postgres_backend_needs_its_keys() {
        let load = |pairs: &[(&str, &str)]| {
            let mut vars = vec![("GRAINSTORE__STORAGE__BACKEND", "postgres")];
            vars.extend_from_slice(pairs);
            Config::load_from(None, env(&vars), &Overrides::default())
        };
        let url = (
            "GRAINSTORE__STORAGE__POSTGRES_URL",
            "postgres://u@127.0.0.1/db",
        );
        let bad_url = (
            "GRAINSTORE__STORAGE__POSTGRES_URL",
            "postgres://u@h:notaport/db",
        );
        let objects = |u| ("GRAINSTORE__STORAGE__OBJECT_STORE_URL", u);
        let (memory, s3) = (objects("memory://"), objects("s3://bucket/prefix"));
        let endpoint = |e| ("GRAINSTORE__STORAGE__S3_ENDPOINT", e);
        // Each set of keys and the key its error names. An https endpoint in capitals
        // passes the endpoint's checks and meets the next one, of the pool.
        let refused: &[(&[(&str, &str)], &str)] = &[
            (&[], "storage.postgres_url"),
            (&[url], "storage.object_store_url"),
            (&[url, objects("ftp://x/y")], "storage.object_store_url"),
            (
                &[url, memory, ("GRAINSTORE__STORAGE__POSTGRES_SCHEMA", "a;b")],
                "storage.postgres_schema",
            ),
            (
                &[
                    url,
                    memory,
                    ("GRAINSTORE__STORAGE__POSTGRES_ANSWER_TIMEOUT_MS", "0"),
                ],
                "storage.postgres_answer_timeout_ms",
            ),
            (&[bad_url, memory], "storage.postgres_url"),
            (
                &[url, s3, endpoint("http://127.0.0.1:9000")],
                "storage.s3_allow_http",
            ),
            (
                &[url, s3, endpoint("HTTP://minio:9000")],
                "storage.s3_allow_http",
            ),
            (&[url, s3, endpoint("minio:9000")], "storage.s3_endpoint"),
            (
                &[url, s3, endpoint("s3.example.net")],
                "storage.s3_endpoint",
            ),
            (
                &[url, s3, endpoint(" http://minio:9000")],
                "storage.s3_endpoint",
            ),
            (&[url, s3, endpoint("ftp://h/")], "storage.s3_endpoint"),
            (
                &[url, s3, endpoint("HTTPS://minio:9000")],
                "storage.max_sessions",
            ),
        ];
        for (pairs, key) in refused {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
        let config = load(&[
            url,
            (
                "GRAINSTORE__STORAGE__OBJECT_STORE_URL",
                "s3://bucket/prefix",
            ),
            ("GRAINSTORE__STORAGE__S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("GRAINSTORE__STORAGE__S3_ALLOW_HTTP", "true"),
            ("GRAINSTORE__STORAGE__S3_ACCESS_KEY_ID", "k"),
            ("GRAINSTORE__STORAGE__S3_SECRET_ACCESS_KEY", "s"),
            ("GRAINSTORE__STORAGE__MAX_SESSIONS", "24"),
        ])
        .unwrap();
        assert_eq!(config.storage.backend, Backend::Postgres);
        assert_eq!(config.postgres().objects.url, "s3://bucket/prefix");
        // No object cache unless asked for; when asked, under the data directory.
        assert_eq!(config.postgres().object_cache, None);
        let config = load(&[
            url,
            ("GRAINSTORE__STORAGE__OBJECT_STORE_URL", "memory://"),
            ("GRAINSTORE__STORAGE__MAX_SESSIONS", "24"),
            ("GRAINSTORE__STORAGE__DATA_DIR", "/srv/gs"),
            ("GRAINSTORE__STORAGE__OBJECT_CACHE_BYTES", "1073741824"),
        ])
        .unwrap();
        assert_eq!(
            config.postgres().object_cache,
            Some((PathBuf::from("/srv/gs/object-cache"), 1 << 30))
        );
        // It keeps only what is read unless told to keep uploads too.
        assert!(!config.postgres().object_cache_uploads);
        let config = load(&[
            url,
            ("GRAINSTORE__STORAGE__OBJECT_STORE_URL", "memory://"),
            ("GRAINSTORE__STORAGE__MAX_SESSIONS", "24"),
            ("GRAINSTORE__STORAGE__OBJECT_CACHE_UPLOADS", "true"),
        ])
        .unwrap();
        assert!(config.postgres().object_cache_uploads);
    }

    #[test]
    fn a_postgres_pool_must_outnumber_the_sessions() {
        assert!(check_pool_size(30, 32).is_ok());
        assert!(check_pool_size(1, 3).is_ok());
        for (sessions, pool) in [(31, 32), (32, 32), (1024, 32), (1, 2)] {
            let err = check_pool_size(sessions, pool).unwrap_err().to_string();
            assert!(
                err.contains("storage.max_sessions") && err.contains("storage.postgres_pool_size"),
                "{err}"
            );
        }
        let err = check_pool_size(1024, 32).unwrap_err().to_string();
        assert!(
            err.contains("at most 30") && err.contains("at least 1026"),
            "{err}"
        );

        // At load: the embedded backend's default session limit does not fit the default
        // pool, so the postgres backend needs one chosen; the embedded backend ignores
        // the pool.
        let load = |pairs: &[(&str, &str)]| {
            let mut vars = vec![
                ("GRAINSTORE__STORAGE__BACKEND", "postgres"),
                ("GRAINSTORE__STORAGE__OBJECT_STORE_URL", "memory://"),
                (
                    "GRAINSTORE__STORAGE__POSTGRES_URL",
                    "postgres://u@127.0.0.1/db",
                ),
            ];
            vars.extend_from_slice(pairs);
            Config::load_from(None, env(&vars), &Overrides::default())
        };
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("storage.max_sessions"), "{err}");
        assert!(err.contains("storage.postgres_pool_size"), "{err}");
        let sessions = |n: &'static str| ("GRAINSTORE__STORAGE__MAX_SESSIONS", n);
        let pool = |n: &'static str| ("GRAINSTORE__STORAGE__POSTGRES_POOL_SIZE", n);
        assert!(load(&[sessions("31")]).is_err());
        let config = load(&[sessions("30")]).unwrap();
        assert_eq!(config.postgres().max_sessions, 30);
        assert!(load(&[sessions("100"), pool("101")]).is_err());
        assert!(load(&[sessions("100"), pool("102")]).is_ok());
        let embedded = Config::load_from(
            None,
            env(&[("GRAINSTORE__STORAGE__POSTGRES_POOL_SIZE", "2")]),
            &Overrides::default(),
        );
        assert!(embedded.is_ok());
    }

    #[test]
    fn postgres_tls_settings_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let load = |pairs: &[(&str, &str)]| {
            let mut vars = vec![
                ("GRAINSTORE__STORAGE__BACKEND", "postgres"),
                ("GRAINSTORE__STORAGE__OBJECT_STORE_URL", "memory://"),
                ("GRAINSTORE__STORAGE__MAX_SESSIONS", "16"),
            ];
            if !pairs.iter().any(|(k, _)| k.ends_with("POSTGRES_URL")) {
                vars.push((
                    "GRAINSTORE__STORAGE__POSTGRES_URL",
                    "postgres://u@127.0.0.1/db",
                ));
            }
            vars.extend_from_slice(pairs);
            Config::load_from(None, env(&vars), &Overrides::default())
        };
        let refused = |pairs: &[(&str, &str)], key: &str| {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        };
        let mode = "GRAINSTORE__STORAGE__POSTGRES_SSLMODE";
        let ca = "GRAINSTORE__STORAGE__POSTGRES_SSLROOTCERT";
        let url = "GRAINSTORE__STORAGE__POSTGRES_URL";
        refused(&[(mode, "verify-everything")], "storage.postgres_sslmode");
        refused(&[(mode, "verify-full")], "storage.postgres_sslrootcert");
        refused(&[(mode, "verify-ca")], "storage.postgres_sslrootcert");
        refused(
            &[(mode, "verify-full"), (ca, missing.to_str().unwrap())],
            "storage.postgres_sslrootcert",
        );
        refused(
            &[(mode, "verify-full"), (ca, not_pem.to_str().unwrap())],
            "storage.postgres_sslrootcert",
        );
        refused(
            &[(mode, "disable"), (ca, not_pem.to_str().unwrap())],
            "storage.postgres_sslrootcert",
        );
        refused(
            &[(url, "postgres://u@127.0.0.1/db?sslmode=require")],
            "storage.postgres_url",
        );
        refused(
            &[(url, "host=127.0.0.1 user=u sslrootcert=/ca.pem")],
            "storage.postgres_url",
        );
        let config = load(&[]).unwrap();
        assert_eq!(
            config.postgres().ssl_mode,
            crate::store::postgres::SslMode::Prefer
        );
        let config = load(&[(mode, "require")]).unwrap();
        assert_eq!(
            config.postgres().ssl_mode,
            crate::store::postgres::SslMode::Require
        );
        assert_eq!(config.postgres().ssl_root_cert, None);
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load_from(
            Some(Path::new("/nonexistent/grainstore.toml")),
            env(&[]),
            &Overrides::default(),
        );
        assert!(err.is_err());
    }
}
