//! Clients run from a pod's namespace: a one-shot connection that reports the source address
//! the server saw, and a long-lived connection that keeps sending and measures stalls.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::netns::in_netns;

/// Why a connection attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// TCP RST (the firewall's `reject with tcp reset`, or nothing listening).
    Refused,
    /// No answer within the timeout (dropped somewhere).
    Timeout,
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => f.write_str("refused (reset)"),
            ConnectError::Timeout => f.write_str("timed out"),
            ConnectError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ConnectError {}

fn classify(e: std::io::Error) -> ConnectError {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => ConnectError::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ConnectError::Timeout,
        _ => ConnectError::Other(e.to_string()),
    }
}

/// Parses the server greeting `peer=<ip>:<port>`.
pub fn parse_greeting(line: &str) -> Option<SocketAddrV4> {
    line.trim().strip_prefix("peer=")?.parse().ok()
}

/// Opens a TCP connection from inside `netns` (the socket stays in that namespace).
pub fn open_stream(
    netns: PathBuf,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<Result<TcpStream, ConnectError>> {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout).map_err(classify)
    })
}

/// Connects, reads the greeting, returns the source address the server saw.
pub fn connect_once(
    netns: PathBuf,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<Result<SocketAddrV4, ConnectError>> {
    let stream = match open_stream(netns, dst, timeout)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    Ok(match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => Err(ConnectError::Refused),
        Ok(_) => parse_greeting(&line)
            .ok_or_else(|| ConnectError::Other(format!("bad greeting {line:?}"))),
        Err(e) => Err(classify(e)),
    })
}

/// What a long-lived connection experienced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LongLivedReport {
    /// The source address the server saw when the connection opened.
    pub seen: Option<SocketAddrV4>,
    pub sent: u64,
    pub received: u64,
    /// Longest time without an echo while lines were outstanding.
    pub max_stall: Duration,
    /// The error that ended the connection, if one did.
    pub error: Option<String>,
}

impl LongLivedReport {
    /// Whether the connection is still intact: no error and every line echoed.
    pub fn survived(&self) -> bool {
        self.error.is_none() && self.sent > 0 && self.received == self.sent
    }
}

/// A connection that sends `seq N` every `interval` and reads the echoes.
pub struct LongLived {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<LongLivedReport>>,
    thread: Option<JoinHandle<()>>,
}

impl LongLived {
    /// Opens the connection from `netns` and starts sending. TCP_USER_TIMEOUT bounds how long
    /// a dead path goes unnoticed.
    pub fn start(netns: PathBuf, dst: SocketAddrV4, interval: Duration) -> Result<Self> {
        let stream = open_stream(netns, dst, Duration::from_secs(3))?
            .map_err(|e| anyhow::anyhow!("long-lived connect to {dst}: {e}"))?;
        stream.set_nodelay(true)?;
        let timeout_ms: libc::c_uint = 10_000;
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                &timeout_ms as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_uint>() as u32,
            );
        }
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        let state = Arc::new(Mutex::new(LongLivedReport {
            seen: parse_greeting(&greeting),
            ..Default::default()
        }));
        stream.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut writer = stream;
            let mut last_echo = Instant::now();
            let mut next_send = Instant::now();
            let mut line = String::new();
            let fail = |st: &Arc<Mutex<LongLivedReport>>, e: String| {
                st.lock().expect("poisoned").error.get_or_insert(e).clone()
            };
            loop {
                let stopping = sp.load(Ordering::Relaxed);
                let (sent, received) = {
                    let s = st.lock().expect("poisoned");
                    (s.sent, s.received)
                };
                if stopping && (received >= sent || last_echo.elapsed() > Duration::from_secs(3)) {
                    if received < sent {
                        fail(&st, format!("{} lines never echoed", sent - received));
                    }
                    return;
                }
                if !stopping && Instant::now() >= next_send {
                    if let Err(e) = writer.write_all(format!("seq {sent}\n").as_bytes()) {
                        fail(&st, format!("send: {e}"));
                        return;
                    }
                    if sent == received {
                        last_echo = Instant::now();
                    }
                    st.lock().expect("poisoned").sent += 1;
                    next_send = Instant::now() + interval;
                }
                match reader.read_line(&mut line) {
                    Ok(0) => {
                        fail(&st, "closed by peer".into());
                        return;
                    }
                    Ok(_) if line.ends_with('\n') => {
                        let mut s = st.lock().expect("poisoned");
                        s.received += 1;
                        s.max_stall = s.max_stall.max(last_echo.elapsed());
                        last_echo = Instant::now();
                        line.clear();
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        let outstanding = st.lock().expect("poisoned");
                        if outstanding.sent > outstanding.received {
                            drop(outstanding);
                            let mut s = st.lock().expect("poisoned");
                            s.max_stall = s.max_stall.max(last_echo.elapsed());
                        }
                    }
                    Err(e) => {
                        fail(&st, format!("recv: {e}"));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            stop,
            state,
            thread: Some(thread),
        })
    }

    /// The report so far, without stopping.
    pub fn peek(&self) -> LongLivedReport {
        self.state.lock().expect("poisoned").clone()
    }

    /// Stops sending, waits for the outstanding echoes, returns the report.
    pub fn finish(mut self) -> LongLivedReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peek()
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The IP of an address the server reported.
pub fn seen_ip(seen: SocketAddrV4) -> Ipv4Addr {
    *seen.ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_parses() {
        assert_eq!(
            parse_greeting("peer=198.18.0.200:40000\n"),
            Some("198.18.0.200:40000".parse().unwrap())
        );
        assert_eq!(parse_greeting("hello"), None);
    }
}
