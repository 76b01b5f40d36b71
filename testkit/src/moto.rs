//! A throwaway `moto_server` on a free port: the Athena API for the report runner's
//! tests, with result paging and a failing query (see `testkit/moto_paged.py`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::{Proc, free_port, venv_bin, wait_for_port};

/// A moto_server process (from the tools virtualenv), killed on drop.
#[derive(Debug)]
pub struct Moto {
    pub port: u16,
    _proc: Proc,
}

impl Moto {
    /// Starts one. Panics if the virtualenv is missing (`scripts/py-tools.sh`).
    pub fn start() -> Self {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto_paged.py");
        let mut cmd = Command::new(venv_bin("python"));
        cmd.arg(script).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        let proc = Proc::spawn("moto_server", &mut cmd).expect("spawn moto_server");
        wait_for_port(port, "moto_server");
        Self { port, _proc: proc }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POSTs JSON to moto's control API (seeding results, state transitions) and returns
    /// the status code. Plain HTTP/1.1 over a socket: the tests that use it are async,
    /// and this needs no client runtime.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> u16 {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect moto");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write to moto");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read moto's answer");
        resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}
