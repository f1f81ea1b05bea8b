//! The `grainstore` command: `grainstore serve --listen ADDR --data-dir DIR [--config FILE]`
//! (the default), and the client commands of [`cli`]: `flows`, `import`, `export`,
//! `tail`, `probe`, `completions`.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use grainstore::config::{Config, Overrides};
use grainstore::server::{Server, shutdown_signal};

/// Examples shown by `grainstore --help`.
const EXAMPLES: &str = "\
Examples:
  grainstore                                   serve on 127.0.0.1:8080 with ./data
  grainstore serve --listen 0.0.0.0:8080 --data-dir /var/lib/grainstore
  grainstore import video.gsf                  store a GSF file (flows created as needed)
  grainstore import video.gsf --flow 1720b676-aab6-4a00-b11f-adf55bc13943
  grainstore export --flow ID --timerange '[1420102800:0_1420102810:0)' > out.gsf
  grainstore tail --flow ID --json             follow a flow live, one JSON grain a line
  grainstore flows ls
  grainstore probe video.gsf
  grainstore completions bash > /etc/bash_completion.d/grainstore

The client commands talk to --url (GRAINSTORE_URL, default http://127.0.0.1:8080)
with the bearer token --token (GRAINSTORE_TOKEN).
";

/// grainstore: flows of media grains, stored durably and served as time-addressed streams.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES, after_long_help = format!("{EXAMPLES}\n{}", cli::EXIT_CODES_HELP))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the default command).
    Serve(ServeArgs),
    /// List, show, create or delete flows.
    #[cfg(feature = "client")]
    Flows(cli::flows::FlowsArgs),
    /// Store the grains of a GSF file (creating their flows when missing).
    #[cfg(feature = "client")]
    #[command(
        after_help = "Examples:\n  grainstore import video.gsf\n  wrap_video_in_gsf in.yuv - --size 1920x1080 | grainstore import - --flow ID"
    )]
    Import(cli::import::ImportArgs),
    /// Write a flow's grains (or a range of them) as a GSF file.
    #[cfg(feature = "client")]
    #[command(
        after_help = "Examples:\n  grainstore export --flow ID > out.gsf\n  grainstore export --flow ID --timerange '[1420102800:0_1420102801:0)' -o second.gsf"
    )]
    Export(cli::export::ExportArgs),
    /// Follow a flow live, one line per grain; resumes by itself across restarts.
    #[cfg(feature = "client")]
    #[command(
        after_help = "Examples:\n  grainstore tail --flow ID\n  grainstore tail --flow ID --from 1420102800:0 --json --count 25"
    )]
    Tail(cli::tail::TailArgs),
    /// Show what a GSF file holds (as mediagrains' gsf_probe does), as JSON.
    Probe(cli::probe::ProbeArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  grainstore completions bash > ~/.local/share/bash-completion/completions/grainstore\n  grainstore completions zsh > ~/.zfunc/_grainstore\n  grainstore completions fish > ~/.config/fish/completions/grainstore.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory of the embedded store, or of the postgres backend's object cache
    /// (overrides `storage.data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML file overriding the defaults (see config/default.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => ServeArgs::default(),
        #[cfg(feature = "client")]
        Some(Command::Flows(args)) => return cli::run(cli::flows::run(args)),
        #[cfg(feature = "client")]
        Some(Command::Import(args)) => return cli::run(cli::import::run(args)),
        #[cfg(feature = "client")]
        Some(Command::Export(args)) => return cli::run(cli::export::run(args)),
        #[cfg(feature = "client")]
        Some(Command::Tail(args)) => return cli::run(cli::tail::run(args)),
        Some(Command::Probe(args)) => return cli::run(async move { cli::probe::run(args) }),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "grainstore",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
    };
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("grainstore: {e}");
            return ExitCode::from(2);
        }
    };
    grainstore::logging::init(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("grainstore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "grainstore stopped");
            eprintln!("grainstore: {e}");
            ExitCode::FAILURE
        }
    }
}
