//! moto's S3 server (`python3 -m moto.server`, PyPI `moto[server]`) as a second S3
//! implementation beside SeaweedFS (tests/util/weed.rs), for what segd must not take from
//! SeaweedFS's particular behaviour: the error codes of AWS's documented replies
//! (`NoSuchBucket` on any request to a bucket that does not exist, …). Started on a free loopback
//! port, the bucket `S3_BUCKET` created with `tests/tools/s3_put.py`, stopped on drop; objects
//! live in its memory.
//!
//! moto checks no signature of the presigned requests segd sends (it verifies SigV4 only in an
//! `Authorization` header, and only once its IAM checks are switched on): SeaweedFS's tests are
//! the ones that check segd's signatures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::weed::{free_port, s3_object, s3_put, S3Object, S3_SECRET};

pub struct Moto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto, up to three times (a port chosen free may be taken before moto binds it).
    pub fn start() -> Moto {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Moto::try_start() {
                Ok(m) => return m,
                Err(e) => {
                    eprintln!("moto_server did not come up, trying again on a new port: {e}");
                    failures.push(e);
                }
            }
        }
        panic!(
            "moto_server did not come up in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start() -> Result<Moto, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("s3-secret"), format!("{S3_SECRET}\n")).expect("secret");
        std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn python3 -m moto.server");
        let mut moto = Moto { child, port, dir };
        let ready = moto.wait_ready().and_then(|()| {
            s3_put(
                &moto.endpoint(),
                &moto.secret_file(),
                &moto.dir.path().join("empty"),
                "",
                &[],
            )
        });
        match ready {
            Ok(()) => Ok(moto),
            Err(e) => Err(format!("{e}\n{}", moto.log())),
        }
    }

    /// Ready = the port answers HTTP; an error if moto exits or takes more than 30 s.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                let mut b = [0u8; 9];
                if s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!(
                    "its port did not answer ({exited:?}; is moto[server] installed? .ci/run installs it)"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A file holding the secret (moto takes any key; segd reads it like any other).
    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("s3-secret")
    }

    /// Uploads a tree as keys `prefix` + its relative paths (boto3, `tests/tools/s3_put.py`).
    pub fn upload(&self, src: &Path, prefix: &str) {
        if let Err(e) = s3_put(&self.endpoint(), &self.secret_file(), src, prefix, &[]) {
            panic!("{e}");
        }
    }

    /// GET (or HEAD) of `key` straight from the bucket.
    pub async fn object(&self, method: &str, key: &str) -> S3Object {
        s3_object(&self.endpoint(), method, key).await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
