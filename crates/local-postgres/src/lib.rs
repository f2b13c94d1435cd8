//! A private PostgreSQL cluster started from the machine's own binaries, for
//! `keel up` and the tests when no database URL is given.
//!
//! The cluster lives in a folder Keel owns. Starting is safe when several
//! processes try at once: a file lock serialises them, and a cluster that is
//! already running there is reused. PostgreSQL refuses to run as root, so a
//! root process runs the server as the `postgres` user.

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// How the cluster is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Crash-safe defaults, for `keel up`.
    Durable,
    /// No fsync: fast, and fine for throw-away test data.
    Ephemeral,
}

/// A running private cluster.
#[derive(Debug)]
pub struct LocalPostgres {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<String>,
    started_here: bool,
}

impl LocalPostgres {
    /// Starts the cluster in `root` (creating it on first use), or reuses the
    /// one already running there.
    pub fn start(root: &Path, durability: Durability) -> anyhow::Result<Self> {
        let bin_dir = find_binaries()?;
        let run_as = running_as_root().then(|| "postgres".to_owned());
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        // A folder someone else made (under a shared /tmp, say) could hold a
        // cluster of theirs: never reuse it.
        let owner = fs::metadata(root)?.uid();
        anyhow::ensure!(
            owner == current_uid(),
            "{} belongs to another user (uid {owner}); choose another data folder",
            root.display()
        );
        if run_as.is_some() {
            // The server's user must reach the data folder below it.
            fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        }

        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .context("opening the cluster lock")?;
        lock.lock().context("locking the cluster folder")?;

        let mut cluster = LocalPostgres {
            root: root.to_owned(),
            bin_dir,
            port: 0,
            run_as,
            started_here: false,
        };
        if let Some(port) = cluster.running_port()? {
            cluster.port = port;
            return Ok(cluster);
        }
        if !cluster.data_dir().join("PG_VERSION").exists() {
            cluster.init()?;
        }
        cluster.port = free_port()?;
        cluster.launch(durability)?;
        fs::write(root.join("port"), cluster.port.to_string())?;
        cluster.started_here = true;
        drop(lock);
        Ok(cluster)
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        // Clusters made before passwords were used have none (trust).
        match fs::read_to_string(self.root.join(PASSWORD_FILE)) {
            Ok(password) => format!(
                "postgres://postgres:{}@127.0.0.1:{}/{database}",
                password.trim(),
                self.port
            ),
            Err(_) => format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// The TCP port the server listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder that holds the cluster.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this process started the server (rather than reusing it).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub fn stop(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let output = self.pg_command(
            "pg_ctl",
            &["stop", "-m", "fast", "-w", "-t", "10", "-D", path_str(&data)?],
        )?;
        check(&output, "pg_ctl stop")
    }

    /// Starts the server again after [`LocalPostgres::stop`], on the same
    /// port, so clients that knew it reconnect.
    pub fn resume(&self, durability: Durability) -> anyhow::Result<()> {
        self.launch(durability)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn running_port(&self) -> anyhow::Result<Option<u16>> {
        let data = self.data_dir();
        if !data.join("postmaster.pid").exists() {
            return Ok(None);
        }
        let status = self.pg_command("pg_ctl", &["status", "-D", path_str(&data)?])?;
        if !status.status.success() {
            return Ok(None);
        }
        let port = fs::read_to_string(self.root.join("port"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        Ok(port)
    }

    fn init(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        fs::create_dir_all(&data)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
        if let Some(user) = &self.run_as {
            let output = Command::new("chown")
                .args([&format!("{user}:"), path_str(&data)?])
                .output()
                .context("running chown")?;
            check(&output, "chown of the data folder")?;
        }
        // Password authentication even on loopback: other users of this
        // machine must not reach the cluster. The password lives beside the
        // data, readable by its owner only; initdb reads it from a file the
        // server's user owns, removed right after.
        let password = generate_password()?;
        write_private(&self.root.join(PASSWORD_FILE), &password)?;
        let pwfile = self.root.join("initdb-password");
        write_private(&pwfile, &password)?;
        if let Some(user) = &self.run_as {
            let output = Command::new("chown")
                .args([&format!("{user}:"), path_str(&pwfile)?])
                .output()
                .context("running chown")?;
            check(&output, "chown of the password file")?;
        }
        let pwfile_arg = format!("--pwfile={}", path_str(&pwfile)?);
        let output = self.pg_command(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                &pwfile_arg,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        );
        let _ = fs::remove_file(&pwfile);
        check(&output?, "initdb")
    }

    fn launch(&self, durability: Durability) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.root.join("postgres.log");
        if self.run_as.is_some() && !log.exists() {
            fs::File::create(&log)?.flush()?;
            let output = Command::new("chown").args(["postgres:", path_str(&log)?]).output()?;
            check(&output, "chown of the log")?;
        }
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=400",
            self.port,
            path_str(&data)?
        );
        if durability == Durability::Ephemeral {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let output = self.pg_command(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
            ],
        )?;
        check(&output, "pg_ctl start").with_context(|| format!("see {}", log.display()))
    }

    fn pg_command(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let program = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command
            .args(args)
            // A cluster started here must outlive neither our stdin nor our
            // terminal's Ctrl-C: `keel up` stops it itself, in order.
            .stdin(std::process::Stdio::null())
            .current_dir(&self.root);
        put_in_own_process_group(&mut command);
        command
            .output()
            .with_context(|| format!("running {}", program.display()))
    }
}

/// Where `initdb` and `pg_ctl` are: on PATH, or under /usr/lib/postgresql.
pub fn find_binaries() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versioned.sort_by_key(|dir| std::cmp::Reverse(version_of(dir)));
    for dir in on_path.into_iter().chain(versioned) {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            // Resolve symlinks: runuser needs a path the other user can use.
            let initdb = fs::canonicalize(dir.join("initdb"))?;
            return Ok(initdb.parent().map_or(dir, Path::to_path_buf));
        }
    }
    bail!(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`; \
         macOS: `brew install postgresql`) or point KEEL_DATABASE_URL at a running server."
    )
}

fn version_of(dir: &Path) -> u32 {
    dir.parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The file beside the data folder that holds the superuser's password.
const PASSWORD_FILE: &str = "password";

fn current_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

fn running_as_root() -> bool {
    current_uid() == 0
}

/// 128 random bits, hex: safe in a URL without escaping.
fn generate_password() -> anyhow::Result<String> {
    let bytes: [u8; 16] = rand::random();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to a new file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn check(output: &Output, what: &str) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn put_in_own_process_group(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    command.process_group(0);
}
