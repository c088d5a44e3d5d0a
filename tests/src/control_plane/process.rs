//! One child process of the control plane (etcd or kube-apiserver): spawned with its output in
//! a log file, stopped by its own PID with SIGTERM, then SIGKILL.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::{ControlPlaneError, Result};

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often an exiting process is polled.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Lines of log shown in start-up errors and after a failing test.
pub const LOG_TAIL_LINES: usize = 40;

/// A running child process that is stopped when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `binary` with `args`, stdout and stderr appended to `log`. The child also gets
    /// SIGKILL if the thread that started it dies without stopping it (a test binary killed by
    /// a timeout), so no control plane outlives its test run.
    pub fn spawn(name: &'static str, binary: &Path, args: &[String], log: PathBuf) -> Result<Self> {
        let out = File::create(&log)
            .map_err(ControlPlaneError::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(ControlPlaneError::io(format!(
            "duplicating {}",
            log.display()
        )))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(ControlPlaneError::io(format!(
            "starting {}",
            binary.display()
        )))?;
        Ok(Self {
            name,
            child: Some(child),
            log,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file of the process.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the log tail if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(ControlPlaneError::io(format!("polling {}", self.name)))?,
            None => None,
        };
        match exited {
            Some(status) => {
                self.child = None;
                Err(self.exited(status))
            }
            None => Ok(()),
        }
    }

    fn exited(&self, status: ExitStatus) -> ControlPlaneError {
        ControlPlaneError::Exited {
            binary: self.name,
            status,
            log_tail: self.log_tail(),
        }
    }

    /// The last [`LOG_TAIL_LINES`] lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; always reaps the child.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on the PID of our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
