//! The job processes as the manager sees them: spawned and told what to train (the protocol's
//! `open`, once), fed commands, their events and exits delivered on one channel, the tail of
//! their standard error kept for failure reports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::protocol::{Command, Event, send};
use crate::train::SessionConfig;
use crate::{Error, Result};

/// Lines of a job process's standard error kept for its failure report.
const STDERR_TAIL: usize = 20;

/// What arrives from the process of job `job` (its index).
#[derive(Debug)]
pub enum Message {
    Event(usize, Event),
    /// Its standard output closed (it exited or is about to).
    Closed(usize),
}

/// The manager's handle on one running job process.
pub struct JobProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl JobProcess {
    /// Starts `exe --job-process=NAME` for job `index` and sends it `config` (the job's name
    /// is on the command line only so that `ps` shows which job a process trains).
    pub fn spawn(
        exe: &Path,
        index: usize,
        config: SessionConfig,
        events: Sender<Message>,
    ) -> Result<JobProcess> {
        let name = config.name.clone();
        let mut cmd = Process::new(exe);
        // One argument, so that a name starting with '-' is not read as a flag.
        cmd.arg(format!("--job-process={name}"));
        // A process group of its own: Ctrl-C reaches the manager only, which stops every
        // job process in order (each checkpoints first).
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting the process of job '{name}'"), e))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = match serde_json::from_str::<Event>(&line) {
                        Ok(event) => Message::Event(index, event),
                        Err(e) => Message::Event(
                            index,
                            Event::Failed {
                                message: format!("sent a line that is not an event ({e}): {line}"),
                            },
                        ),
                    };
                    if events.send(msg).is_err() {
                        return;
                    }
                }
                let _ = events.send(Message::Closed(index));
            });
        }
        if let Some(stderr) = stderr {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let mut process = JobProcess {
            stdin: child.stdin.take(),
            child,
            stderr_tail: tail,
        };
        process.send(&Command::Open {
            config: Box::new(config),
        });
        Ok(process)
    }

    /// Sends a command; a process that is gone is noticed through its closed output instead.
    pub fn send(&mut self, command: &Command) {
        if let Some(stdin) = &mut self.stdin
            && send(stdin, command).is_err()
        {
            self.stdin = None;
        }
    }

    /// Closes its standard input (which also tells it to stop).
    pub fn close_input(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
    }

    /// Ends the process at once (SIGKILL): for one that no longer answers. Its closed output
    /// then arrives as usual.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the process to end; describes how it ended when that was not a clean exit,
    /// with the last line it printed to standard error.
    pub fn wait(mut self) -> Option<String> {
        self.close_input();
        let status = self.child.wait();
        let last = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .back()
            .cloned();
        match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some(match last {
                Some(line) => format!("the job process ended ({s}); its last words: {line}"),
                None => format!("the job process ended ({s})"),
            }),
            Err(e) => Some(format!("waiting for the job process: {e}")),
        }
    }
}
