//! The client subcommands of the `grainstore` command: `flows`, `import`, `export`,
//! `tail` (over HTTP, through `grainstore::client`) and `probe` (a local GSF file).
//!
//! Every command reports a failure as one line on stderr that says what to do, and
//! exits with a code from [`Exit`], which scripts can rely on.

#[cfg(feature = "client")]
pub mod export;
#[cfg(feature = "client")]
pub mod flows;
#[cfg(feature = "client")]
pub mod import;
pub mod probe;
#[cfg(feature = "client")]
pub mod progress;
#[cfg(feature = "client")]
pub mod tail;

use std::process::ExitCode;

#[cfg(feature = "client")]
use grainstore::client::{ClientError, FlowProvider, ProviderOptions};

/// The exit codes of a failed command (documented in `--help` and the README); 0 is
/// success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: an unexpected failure (a bug, an I/O error writing the output).
    Failure = 1,
    /// 2: the command line or the configuration is invalid.
    Usage = 2,
    /// 3: the flow (or another resource) does not exist.
    NotFound = 3,
    /// 4: a different grain is already stored at a timestamp written (conflict).
    Conflict = 4,
    /// 5: the service cannot be reached or stays unavailable through the retries.
    Unavailable = 5,
    /// 6: the input is invalid: a malformed GSF file, or a value the service refused.
    BadInput = 6,
    /// 7: the service refused the credentials (401/403).
    Unauthorized = 7,
}

/// The text of `--help` that lists the exit codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done
  1  unexpected failure
  2  invalid command line or configuration
  3  flow not found
  4  conflict: a different grain is already stored at a timestamp written
  5  service unreachable or unavailable (after retries)
  6  invalid input: malformed GSF, or a value the service refused
  7  credentials refused (401/403)";

/// A failure of a command: its exit code and the one line that explains it.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong and what to do, in one line.
    pub message: String,
}

impl CliError {
    /// A failure with this code and message.
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// A client failure, explained for someone at a terminal talking to `url`.
    #[cfg(feature = "client")]
    pub fn client(e: ClientError, url: &str) -> CliError {
        use Exit::*;
        let status = e.status();
        let detail = e
            .problem()
            .map(|p| p.detail.clone())
            .unwrap_or_else(|| e.to_string());
        match &e {
            ClientError::PartialWrite {
                committed,
                timestamp,
                problem,
                ..
            } => {
                let at = timestamp
                    .as_ref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default();
                let exit = match problem.status {
                    409 => Conflict,
                    401 | 403 => Unauthorized,
                    404 => NotFound,
                    500.. => Unavailable,
                    _ => BadInput,
                };
                CliError::new(
                    exit,
                    format!(
                        "write stopped{at} after {committed} grains were committed: {}",
                        problem.detail
                    ),
                )
            }
            ClientError::Unavailable { attempts, last } => CliError::new(
                Unavailable,
                format!(
                    "the service at {url} is unavailable after {attempts} attempts ({last}); check that it is running and try again later"
                ),
            ),
            ClientError::Transport(t) if t.is_connect() || t.is_timeout() => CliError::new(
                Unavailable,
                format!(
                    "cannot reach the service at {url}: is it running? Set --url or GRAINSTORE_URL ({t})"
                ),
            ),
            ClientError::InvalidInput(m) => CliError::new(Usage, m.clone()),
            _ => match status {
                Some(404) => CliError::new(
                    NotFound,
                    format!("{detail}; `grainstore flows ls` lists the flows"),
                ),
                Some(409) => CliError::new(Conflict, detail),
                Some(401 | 403) => CliError::new(
                    Unauthorized,
                    format!("{detail}; pass a valid token with --token or GRAINSTORE_TOKEN"),
                ),
                Some(500..) => CliError::new(
                    Unavailable,
                    format!("the service failed: {detail}; try again later"),
                ),
                Some(_) => CliError::new(BadInput, format!("the service refused: {detail}")),
                None => CliError::new(Failure, e.to_string()),
            },
        }
    }

    /// An I/O failure on a local file or stream.
    pub fn io(what: &str, e: std::io::Error) -> CliError {
        CliError::new(Exit::Failure, format!("{what}: {e}"))
    }
}

/// The result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Where the service is and how to authenticate.
#[cfg(feature = "client")]
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs {
    /// The service's URL.
    #[arg(
        long,
        env = "GRAINSTORE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_name = "URL"
    )]
    pub url: String,
    /// A bearer token for the service.
    #[arg(
        long,
        env = "GRAINSTORE_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[cfg(feature = "client")]
impl ServiceArgs {
    /// A provider connected to the service.
    pub fn connect(&self) -> CliResult<FlowProvider> {
        let mut options = ProviderOptions::default();
        if let Some(token) = &self.token {
            options = options.with_token(token.clone());
        }
        FlowProvider::connect(&self.url, options).map_err(|e| self.fail(e))
    }

    /// A client failure as a command failure.
    pub fn fail(&self, e: ClientError) -> CliError {
        CliError::client(e, &self.url)
    }
}

/// Runs a command's future on a runtime and turns its outcome into the exit code,
/// printing a failure as one line.
pub fn run(command: impl std::future::Future<Output = CliResult>) -> ExitCode {
    restore_sigpipe();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("grainstore: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grainstore: {}", e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}

/// A command whose output is cut (`| head`, `| grep -q`) ends quietly, as Unix tools
/// do, instead of failing on its next write (Rust ignores SIGPIPE by default; the
/// service keeps that, the client commands do not).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Warnings (retries, abandoned writes) to stderr; `RUST_LOG` for more.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses a flow id argument.
pub fn parse_uuid(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text.trim()).map_err(|e| {
        format!("not a UUID ({e}); flow ids look like 1720b676-aab6-4a00-b11f-adf55bc13943")
    })
}
