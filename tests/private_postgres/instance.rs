//! A PostgreSQL instance of the test's own: `initdb` into a temporary directory, started
//! and stopped with `pg_ctl` on a free port (its unix socket in that directory too), so
//! a test may kill it, restart it or turn TLS on without disturbing anything else.
//!
//! initdb refuses to run as root: as root, the server's commands run as the `postgres`
//! user (`runuser -u postgres --`) and the directory is handed to it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the PostgreSQL server binaries are: `$GRAINSTORE_TEST_PG_BINDIR` if set (then
/// they must be there), else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`. `Err` says why none was found.
pub fn find_bindir() -> Result<PathBuf, String> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("GRAINSTORE_TEST_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        assert!(
            usable(&dir),
            "GRAINSTORE_TEST_PG_BINDIR={} has no initdb and pg_ctl",
            dir.display()
        );
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server binaries (initdb, pg_ctl): not in GRAINSTORE_TEST_PG_BINDIR, \
         pg_config --bindir or /usr/lib/postgresql/*/bin"
            .into()
    })
}

/// A private PostgreSQL instance; dropping it stops the server (immediately) and
/// removes its directory.
pub struct PrivatePostgres {
    bindir: PathBuf,
    /// As root: the commands run as this user, who owns the directory.
    run_as: Option<&'static str>,
    pub port: u16,
    /// Holds `data/`, `sock/`, `log` and whatever a test puts there (certificates).
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates the cluster (user `postgres`, trust authentication) with `conf` appended
    /// to its `postgresql.conf`; `files` (name, contents) are written into the data
    /// directory first, readable by the server only (certificates and keys).
    pub fn create(bindir: PathBuf, conf: &str, files: &[(&str, &[u8])]) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("grainstore-pg-")
            .tempdir()
            .expect("temp dir");
        let run_as = is_root().then_some("postgres");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        let port = free_port();
        let instance = PrivatePostgres {
            bindir,
            run_as,
            port,
            dir,
        };
        if let Some(user) = run_as {
            run(Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(instance.dir.path()));
        }
        instance.pg(
            "initdb",
            &[
                "-D",
                &instance.data().to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let mut settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 100\n{conf}\n",
            instance.dir.path().join("sock").display()
        );
        settings.insert_str(0, &std::fs::read_to_string(instance.conf()).expect("conf"));
        std::fs::write(instance.conf(), settings).expect("write conf");
        for (name, contents) in files {
            let path = instance.data().join(name);
            std::fs::write(&path, contents).expect("write a file of the server");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some(user) = run_as {
                run(Command::new("chown").arg(user).arg(&path));
            }
        }
        instance.start();
        instance
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn conf(&self) -> PathBuf {
        self.data().join("postgresql.conf")
    }

    /// The URL of its `postgres` database over TCP.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.dir.path().join("log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`): connections are
    /// cut, and the next start recovers from the WAL.
    pub fn stop_immediate(&self) {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) every process of the server: while
    /// frozen, connections stay open and new ones are accepted by the kernel, but
    /// nothing answers, as with a database host that went away without a word.
    pub fn signal_all(&self, signal: &str) {
        let pid = self.postmaster_pid().expect("the server is running");
        // The postmaster first, so that it starts no process in between.
        run(Command::new("kill").arg(format!("-{signal}")).arg(&pid));
        signal_children(&pid, signal);
    }

    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        Some(text.lines().next()?.trim().to_owned())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs one of the server's programs (as the `postgres` user under root); panics
    /// with its output if it fails.
    fn pg(&self, program: &str, args: &[&str]) {
        let binary = self.bindir.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command.args(args).current_dir(self.dir.path());
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Whatever state the test left it in: a frozen server is thawed so that it can
        // stop, and stopping a stopped server fails harmlessly.
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-CONT", &pid]).output();
            signal_children(&pid, "CONT");
        }
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bindir.join("pg_ctl"));
                c
            }
            None => Command::new(self.bindir.join("pg_ctl")),
        };
        let _ = command
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// Sends `signal` to the children of `pid`; one that exits meanwhile is no failure.
fn signal_children(pid: &str, signal: &str) {
    let Ok(children) = Command::new("pgrep").args(["-P", pid]).output() else {
        return;
    };
    let children = String::from_utf8_lossy(&children.stdout).into_owned();
    if children.trim().is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(children.split_whitespace())
        .output();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn run(command: &mut Command) {
    let out = command.output().expect("run a command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
