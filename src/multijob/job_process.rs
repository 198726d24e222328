//! The job process: one job of a multi-job run, in a process of its own (`attnrt-train
//! --job-process=NAME`, started by the manager). It reads the manager's commands on standard
//! input, opens its job as the first one ([`Command::Open`]) says, and reports on standard
//! output ([`super::protocol`]). A process per job is what isolates the jobs: a crash, an
//! out-of-memory error or a poisoned CUDA context ends one job process, and the manager goes
//! on.

use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};

use super::protocol::{Command, Event, send};
use crate::base::DistributionRatio;
use crate::train::{Session, stop_on_signals};
use crate::{Error, Result};

/// Runs the job process on this process's standard input and output. An error is also sent
/// to the manager as [`Event::Failed`] before it is returned (the caller prints it and exits
/// with 1).
pub fn serve() -> Result<()> {
    let mut out = io::stdout().lock();
    let result = run(&mut out);
    if let Err(e) = &result {
        let message = e.to_string();
        let _ = send(&mut out, &Event::Failed { message });
    }
    result
}

/// What the command reader hands the job's control loop.
enum Control {
    Command(Command),
    /// A line that is not a command: the job stops, and this says why.
    Garbled(String),
}

fn run(out: &mut impl Write) -> Result<()> {
    let stop = stop_on_signals()?;
    let lost = |e: io::Error| Error::io("the manager's pipe (standard output)", e);
    let (control, dr_updates) = route_commands(stop.clone());
    let config = match control.recv() {
        Ok(Control::Command(Command::Open { config })) => config,
        Ok(Control::Garbled(why)) => return Err(garbled(why)),
        // Stopped before it was opened: nothing to checkpoint.
        Ok(Control::Command(Command::Stop)) | Err(_) => {
            return farewell(out, &Event::Stopped { step: 0 });
        }
        Ok(Control::Command(_)) => {
            return Err(Error::invalid(
                "the manager's first command",
                "expected `open`, which says what to train",
            ));
        }
    };
    let mut session = Session::open(*config)?;
    let start_step = session.start_step();
    send(
        out,
        &Event::Ready {
            start_step,
            iterations: session.job().iterations,
            batch_size: session.job().batch_size,
            notice: session.notice(),
            damaged: session.damaged().iter().map(|d| d.to_string()).collect(),
        },
    )
    .map_err(lost)?;

    let dr = loop {
        match control.recv() {
            Ok(Control::Command(Command::Calibrate { gpu })) => {
                let calibration = session.calibrate(gpu)?;
                send(out, &Event::Calibrated { calibration }).map_err(lost)?;
            }
            Ok(Control::Command(Command::Start { dr })) => break dr,
            Ok(Control::Garbled(why)) => return Err(garbled(why)),
            // Stop, or the manager is gone: nothing trained since the last checkpoint.
            _ => return farewell(out, &Event::Stopped { step: start_step }),
        }
    };

    let outcome = session.train(dr, stop.clone(), Some(dr_updates), &mut |p| {
        let step = Event::Step {
            step: p.step,
            step_s: p.step_s,
            loss: p.loss,
            accuracy: p.accuracy,
            samples_per_s: p.samples_per_s,
            checkpoint_error: p.checkpoint_error.clone(),
        };
        // Without a manager to report to, checkpoint and stop.
        if send(out, &step).is_err() {
            stop.store(true, Ordering::SeqCst);
        }
    })?;
    let last = if outcome.stopped {
        Event::Stopped { step: outcome.step }
    } else {
        Event::Finished {
            step: outcome.step,
            loss: outcome.loss,
            accuracy: outcome.accuracy,
        }
    };
    farewell(out, &last)?;
    // A garbled line stops the job like `stop` does; say so once it is checkpointed.
    match control.try_recv() {
        Ok(Control::Garbled(why)) => Err(garbled(why)),
        _ => Ok(()),
    }
}

/// Sends the job's last event. A manager that is gone (killed, say) cannot hear it, and the job
/// has checkpointed: that is a clean end, not an error.
fn farewell(out: &mut impl Write, last: &Event) -> Result<()> {
    let _ = send(out, last);
    Ok(())
}

fn garbled(why: String) -> Error {
    Error::invalid("the manager's pipe (standard input)", why)
}

/// Reads commands from standard input on a thread of its own: DR changes go to the training
/// loop (applied at its next step), `Stop` (or the end of input, or a line that is not a
/// command) sets `stop`, and every other command goes to the control channel.
fn route_commands(stop: Arc<AtomicBool>) -> (Receiver<Control>, Receiver<DistributionRatio>) {
    let (control_tx, control) = mpsc::channel();
    let (dr_tx, dr_updates) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(Command::SetDr { dr }) => {
                    let _ = dr_tx.send(dr);
                }
                Ok(Command::Stop) => break,
                Ok(other) => {
                    if control_tx.send(Control::Command(other)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ =
                        control_tx.send(Control::Garbled(format!("not a command ({e}): {line}")));
                    break;
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        let _ = control_tx.send(Control::Command(Command::Stop));
    });
    (control, dr_updates)
}
