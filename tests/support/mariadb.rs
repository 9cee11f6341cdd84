//! A MariaDB server (Debian's, installed by `hack/install-mariadb.sh`) as a plain process on
//! 127.0.0.1 and a free port, with TLS required: what the setup script and the restore
//! checks talk to. Its certificate, from a CA made here, names 127.0.0.1 and any host names
//! asked for (an RDS endpoint's, so hostname verification is tested through the operator's
//! address map). Its root user is reached over the socket; it stops when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MariaDb {
    pub dir: PathBuf,
    pub port: u16,
    /// The CA that signed the server's certificate (SANs: IP 127.0.0.1 and the names given).
    pub ca: PathBuf,
    server: Child,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run hack/install-mariadb.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `name` from the PATH, else from /usr/sbin (where Debian puts `mariadbd`, and which a
/// non-login shell's PATH may lack).
fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([Path::new("/usr/sbin").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl MariaDb {
    /// A new server in a new directory under the system's temporary directory.
    pub fn start(name: &str) -> MariaDb {
        MariaDb::start_for(name, &[])
    }

    /// A new server whose certificate also names `hosts` (e.g. `*.aaaaaaaaaa.us-east-1.rds.amazonaws.com`).
    pub fn start_for(name: &str, hosts: &[&str]) -> MariaDb {
        let dir = std::env::temp_dir().join(format!("openemr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // A temporary directory of its own: the bootstrap's temporary tables in the shared
        // /tmp were seen to vanish while several servers were made at once.
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let tmpdir = format!("--tmpdir={}", dir.join("tmp").display());
        let ca = certificates(&dir, hosts);
        let user = run(Command::new("id").arg("-un")).trim().to_string();
        run(Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(&tmpdir)
            .stdout(Stdio::null()));
        let port = free_port();
        let server = Command::new(program("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("s").display()))
            .arg(&tmpdir)
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-log-bin")
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--ssl-cert={}", dir.join("server.pem").display()))
            .arg(format!("--ssl-key={}", dir.join("server.key").display()))
            .arg("--require-secure-transport=ON")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .expect("mariadbd (run hack/install-mariadb.sh)");
        let db = MariaDb {
            dir,
            port,
            ca,
            server,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.try_root("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(db.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        db
    }

    fn try_root(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.join("s").display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `sql` as the server's root user; its output, tab-separated.
    pub fn root(&self, sql: &str) -> String {
        self.try_root(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// `value` as a MariaDB string literal (the server's default `sql_mode`, where a backslash
/// escapes).
pub fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA of its own in `dir` (`ca.pem`, `ca.key`), which signed nothing: what a client
/// trusting the wrong bundle holds. Its path.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    new_ca(dir, "/CN=unrelated-ca");
    dir.join("ca.pem")
}

fn new_ca(dir: &Path, subject: &str) {
    let at = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-keyout",
            &at("ca.key"),
            "-out",
            &at("ca.pem"),
        ])
        .stderr(Stdio::null()));
}

/// A CA and a server certificate for 127.0.0.1 and `hosts` signed by it, in `dir`; the
/// CA's path.
fn certificates(dir: &Path, hosts: &[&str]) -> PathBuf {
    let at = |f: &str| dir.join(f).display().to_string();
    new_ca(dir, "/CN=test-ca");
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &at("server.key"),
            "-out",
            &at("server.csr"),
        ])
        .stderr(Stdio::null()));
    let names: String = hosts.iter().map(|h| format!(",DNS:{h}")).collect();
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName=IP:127.0.0.1{names}\n"),
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-in",
            &at("server.csr"),
            "-CA",
            &at("ca.pem"),
            "-CAkey",
            &at("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &at("san.ext"),
            "-out",
            &at("server.pem"),
        ])
        .stderr(Stdio::null()));
    dir.join("ca.pem")
}
