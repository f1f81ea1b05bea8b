//! The processes a comparison starts and what it reads of them: CPU seconds and resident
//! memory from `/proc/PID/{stat,status}`, free loopback ports, and a guard that kills
//! a started server however the benchmark ends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process the benchmark started; killed (and reaped) when dropped.
pub struct Server {
    pub pid: u32,
    child: Child,
}

impl Server {
    /// Starts `command` with its output in `log`; the child also dies with this process
    /// (`PR_SET_PDEATHSIG`) so a killed benchmark leaves nothing behind.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Server {
        let out = std::fs::File::create(log).expect("server log file");
        let err = out.try_clone().expect("server log file");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server {
            pid: child.id(),
            child,
        }
    }

    /// This server's counters.
    pub fn stat(&self) -> ProcStat {
        ProcStat::of(self.pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first so servers that flush on exit (redis) do it quickly, then kill.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's CPU and memory at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    /// utime + stime, seconds.
    pub cpu: f64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak resident since start or the last [`reset_peak`]), bytes.
    pub hwm: u64,
}

impl ProcStat {
    /// Reads `/proc/PID/stat` and `/proc/PID/status`.
    pub fn of(pid: u32) -> ProcStat {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The command name may hold spaces: fields are counted after its closing ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Fields 14 and 15 of stat (1-based) are the 12th and 13th after the name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = (ticks(11) + ticks(12)) as f64 / hz;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        ProcStat {
            cpu,
            rss: kib("VmRSS:"),
            hwm: kib("VmHWM:"),
        }
    }
}

/// Resets a process's peak resident size (VmHWM) to its current size.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Samples a process's resident size every few milliseconds until dropped; the largest
/// sample is the peak seen (VmHWM is read too, where the kernel keeps it).
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let s = ProcStat::of(pid);
                peak = peak.max(s.rss).max(s.hwm);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(ProcStat::of(pid).hwm)
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// The peak resident size seen, bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// The pid listening on a TCP port of 127.0.0.1 (for servers the benchmark did not
/// start), found through /proc/net/tcp and the processes' fds.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local = f.get(1)?;
        let state = f.get(3)?;
        let (_, p) = local.split_once(':')?;
        (u16::from_str_radix(p, 16).ok()? == port && *state == "0A").then(|| f[9].to_string())
    })?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                return Some(pid);
            }
        }
    }
    None
}

/// Raises this process's open-file limit to its hard limit; children inherit it.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// A CPU quota on one process and all its threads: a cgroup of its own under the `cpu`
/// controller (cgroup v1's `cpu.cfs_quota_us`, or v2's `cpu.max`), with the process
/// moved back to the group it came from when dropped. Needs root, and for cgroup v2 a
/// hierarchy whose root may enable the `cpu` controller for its children (not a
/// container's namespaced cgroup that holds processes itself).
pub struct CpuLimit {
    pid: u32,
    /// The group made for the process.
    dir: std::path::PathBuf,
    /// Its path within the hierarchy, as `/proc/PID/cgroup` names it.
    name: String,
    /// The group the process was in.
    home: std::path::PathBuf,
}

impl CpuLimit {
    const PERIOD_US: u64 = 100_000;

    pub fn apply(pid: u32, cpus: f64, name: &str) -> Result<CpuLimit, String> {
        let quota = (cpus * Self::PERIOD_US as f64).round() as u64;
        if quota < 1_000 {
            return Err(format!("a quota of {cpus} CPUs is below 1 ms per 100 ms"));
        }
        let write = |path: &Path, value: &str| {
            std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
        };
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (mount, v1_in_use) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1, true)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (v2, false)
        } else {
            return Err("no cgroup cpu controller under /sys/fs/cgroup".into());
        };
        let current = Self::group_of(pid, v1_in_use)
            .ok_or_else(|| format!("cannot read the cgroup of process {pid}"))?;
        if !v1_in_use {
            write(&v2.join("cgroup.subtree_control"), "+cpu").map_err(|e| {
                format!("{e} (the cpu controller cannot be enabled at the root of this cgroup hierarchy)")
            })?;
        }
        let leaf = format!("grainstore-bench-{}-{name}", std::process::id());
        let dir = mount.join(&leaf);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let limit = CpuLimit {
            pid,
            dir,
            name: format!("/{leaf}"),
            home: mount.join(current.trim_start_matches('/')),
        };
        if v1_in_use {
            write(
                &limit.dir.join("cpu.cfs_period_us"),
                &Self::PERIOD_US.to_string(),
            )?;
            write(&limit.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        } else {
            write(
                &limit.dir.join("cpu.max"),
                &format!("{quota} {}", Self::PERIOD_US),
            )?;
        }
        write(&limit.dir.join("cgroup.procs"), &pid.to_string())?;
        Ok(limit)
    }

    /// The path of `pid`'s group in the `cpu` hierarchy (v1) or the unified one (v2).
    fn group_of(pid: u32, v1: bool) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let matches = if v1 {
                controllers.split(',').any(|c| c == "cpu")
            } else {
                controllers.is_empty()
            };
            matches.then(|| path.to_string())
        })
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Home again if it is still in the group (a pid that exited may be reused).
        let v1 = self.dir.starts_with("/sys/fs/cgroup/cpu");
        if Self::group_of(self.pid, v1).is_some_and(|g| g == self.name) {
            let _ = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
