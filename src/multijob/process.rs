//! The worker processes as the manager sees them: spawned with the job's flags, fed
//! commands, their events and exits delivered on one channel, the tail of their standard
//! error kept for failure reports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::protocol::{Command, Event, send};
use crate::base::Precision;
use crate::train::Devices;
use crate::train::optim::OptimizerKind;
use crate::{Error, Result};

/// Lines of a worker's standard error kept for its failure report.
const STDERR_TAIL: usize = 20;

/// What arrives from worker `job`.
#[derive(Debug)]
pub enum Message {
    Event(usize, Event),
    /// Its standard output closed (it exited or is about to).
    Closed(usize),
}

/// The flags every worker of a run shares.
#[derive(Clone, Debug)]
pub struct WorkerFlags {
    pub exe: PathBuf,
    pub jobs_path: PathBuf,
    pub devices: Devices,
    pub seed: u64,
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f32>,
    pub precision: Option<Precision>,
    pub checkpoint_every: u64,
    pub prefetch: usize,
}

/// One running worker process.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    /// Starts the worker of job `index` (`name`), checkpointing into `checkpoint_dir`.
    pub fn spawn(
        flags: &WorkerFlags,
        index: usize,
        name: &str,
        checkpoint_dir: Option<&Path>,
        resume: bool,
        events: Sender<Message>,
    ) -> Result<Worker> {
        let mut cmd = Process::new(&flags.exe);
        cmd.arg("--worker")
            .arg(name)
            .arg("--jobs")
            .arg(&flags.jobs_path)
            .arg("--gpus")
            .arg(flags.devices.flag())
            .arg("--seed")
            .arg(flags.seed.to_string())
            .arg("--prefetch")
            .arg(flags.prefetch.to_string());
        if let Some(o) = flags.optimizer {
            cmd.arg("--optimizer").arg(o.to_string());
        }
        if let Some(lr) = flags.lr {
            cmd.arg("--lr").arg(lr.to_string());
        }
        if let Some(p) = flags.precision {
            cmd.arg("--precision").arg(p.to_string());
        }
        if let Some(dir) = checkpoint_dir {
            cmd.arg("--checkpoint-dir")
                .arg(dir)
                .arg("--checkpoint-every")
                .arg(flags.checkpoint_every.to_string());
            if resume {
                cmd.arg("--resume");
            }
        }
        // A process group of its own: Ctrl-C reaches the manager only, which stops every
        // worker in order (each checkpoints first).
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting the worker of job '{name}'"), e))?;
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
        Ok(Worker {
            stdin: child.stdin.take(),
            child,
            stderr_tail: tail,
        })
    }

    /// Sends a command; a worker that is gone is noticed through its closed output instead.
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
                Some(line) => format!("the worker ended ({s}); its last words: {line}"),
                None => format!("the worker ended ({s})"),
            }),
            Err(e) => Some(format!("waiting for the worker: {e}")),
        }
    }
}
