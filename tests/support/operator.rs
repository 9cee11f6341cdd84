//! A running `openemr-operator run` process, as a cluster would run it: its own identity
//! (the ServiceAccount of deploy/rbac.yaml), probes on a free local port.

use std::process::Stdio;
use std::time::Duration;

use super::TestEnv;

/// A running `openemr-operator run`, killed when dropped.
pub struct Operator {
    child: std::process::Child,
    probe: String,
    log: std::path::PathBuf,
}

impl Operator {
    pub fn start(env: &TestEnv, namespace: Option<&str>) -> Operator {
        Self::start_with(env, namespace, &[])
    }

    /// Like [`Self::start`], with extra arguments to `run` (timings, concurrency).
    pub fn start_with(env: &TestEnv, namespace: Option<&str>, extra: &[&str]) -> Operator {
        Self::start_with_env(env, namespace, extra, &[])
    }

    /// Like [`Self::start_with`], with environment variables set over the environment
    /// file's and the harness's own (e.g. `AWS_ENDPOINT_URL` of a fault proxy).
    pub fn start_with_env(
        env: &TestEnv,
        namespace: Option<&str>,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let probe = format!("127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!(
            "openemr-operator-{}-{port}.log",
            std::process::id()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = env.command(env!("CARGO_BIN_EXE_openemr-operator"));
        cmd.args(["run", "--probe-addr", &probe]);
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        cmd.args(extra);
        let child = cmd
            // The operator's own identity: only what deploy/rbac.yaml grants.
            .env("KUBECONFIG", env.var("OPERATOR_KUBECONFIG"))
            .env("RUST_LOG", "info")
            .env("CLUSTER_ID", super::cluster_id())
            // moto finishes everything at once; no need to wait long between looks.
            .env("PROGRESS_INTERVAL", "1s")
            // Stand-ins for AWS's RDS bundle and Amazon Root CA 1 (not downloadable here).
            .env(
                "MYSQL_CA_FILE",
                format!("{}/tests/fixtures/stand-in-mysql-ca.pem", super::REPO),
            )
            .env(
                "REDIS_CA_FILE",
                format!("{}/tests/fixtures/stand-in-redis-ca.pem", super::REPO),
            )
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the operator");
        Operator {
            child,
            probe,
            log: log_path,
        }
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.probe).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.probe
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    /// Waits (up to 60 s) until `path` answers with HTTP `code`.
    pub async fn wait_for(&self, path: &str, code: u16) {
        super::eventually(
            Duration::from_secs(60),
            &format!("{path} to answer {code}"),
            || async { self.get(path).await.filter(|(got, _)| *got == code) },
        )
        .await;
    }

    /// The value of one sample of the exposition, 0 when absent.
    pub async fn metric(&self, sample: &str) -> u64 {
        let (_, body) = self.get("/metrics").await.expect("metrics reachable");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to 30 s for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.terminate_with_log().0
    }

    /// Sends SIGTERM, waits up to 30 s, and returns the exit status and the whole log.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the operator did not exit within 30 s of SIGTERM");
    }

    /// Kills the process with SIGKILL (no chance to finish anything), waits for it, and
    /// returns its whole log.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// The operator's process id (its memory is read from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The log is kept only when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
