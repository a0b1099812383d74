//! Tasks: `task.create` / `destroy` / `cancel`, the running of `Async.*` calls, and the
//! helpers the HTTP data plane uses to report on the tasks of its transfers.
//!
//! A task's `result` is the XML-RPC serialisation of the return value (`<value>…</value>`),
//! empty for void; a failure sets `error_info` = `[CODE, params…]`, and `TASK_CANCELLED`
//! makes the status `cancelled` (protocol reference §2.6).
//!
//! `task.cancel` follows xapi: a task something runs (a transfer, an `Async.` call, see
//! [`Lab::run_task`]) becomes `cancelling` and its runner ends it; a task nothing runs (made
//! by `task.create` for a transfer that never started, or whose transfer already let go of
//! it) is `cancelled` at once, so that no task stays `cancelling` forever.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::args::{Invocation, Param};
use super::dispatch::{Handler, Message};
use super::{now, this_host, xapi_errors};
use crate::lab::db::{Class, Db, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::xmlrpc::{IntEncoding, encode_value};
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::sync(
        "create",
        &[Param::Required("label"), Param::Required("description")],
        create,
    ),
    Message::sync("destroy", &[Param::Required("self")], destroy),
    Message::sync("cancel", &[Param::Required("task")], cancel),
];

fn create(lab: &Lab, call: &Invocation) -> Response {
    let (label, description) = (call.text(0)?, call.text(1)?);
    lab.with_db_mut(|db| Ok(Value::from(new_task(db, label, description))))
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let task = call.text(0)?;
    lab.with_db_mut(|db| {
        db.remove(Class::Task, task)?;
        Ok(Value::void())
    })
}

/// Cancellation is cooperative: a pending task something runs becomes `cancelling`, and its
/// runner ends it (the data plane checks [`Lab::task_cancelling`]; the lab host's own `Async.*`
/// work is short and runs to its end). A pending task nothing runs ends `cancelled` at once.
fn cancel(lab: &Lab, call: &Invocation) -> Response {
    let task = call.text(0)?;
    lab.with_db_mut(|db| {
        if db.text(Class::Task, task, "status")? != "pending" {
            return Err(xapi_errors::operation_not_allowed(
                "the task is not pending",
            ));
        }
        // Decided under the database lock, under which runners take their tasks.
        if lab.running_tasks().contains(task) {
            db.set(Class::Task, task, "status", Value::from("cancelling"))?;
        } else {
            end_task(db, task, &Err(XapiFault::new("TASK_CANCELLED", [task])))?;
        }
        Ok(Value::void())
    })
}

/// The tasks something is running: a transfer from its checks to its end, an `Async.` call
/// on its worker thread.
#[derive(Debug, Default)]
pub(crate) struct RunningTasks(Mutex<HashSet<String>>);

impl RunningTasks {
    fn contains(&self, task: &str) -> bool {
        self.lock().contains(task)
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A task being run, until this is dropped.
pub(crate) struct TaskRun {
    lab: Lab,
    task: String,
}

impl Drop for TaskRun {
    fn drop(&mut self) {
        self.lab.running_tasks().lock().remove(&self.task);
    }
}

/// Finished tasks kept for clients that have not destroyed theirs, as xapi's task GC does;
/// beyond this, the oldest go.
const MAX_FINISHED_TASKS: usize = 1000;

fn new_task(db: &mut Db, label: &str, description: &str) -> String {
    db.evict_oldest(Class::Task, MAX_FINISHED_TASKS, |task| {
        !matches!(
            task.get("status").and_then(Value::as_str),
            Some("pending" | "cancelling")
        )
    });
    let host = this_host(db);
    let fields: Record = [
        ("name_label".to_owned(), Value::from(label)),
        ("name_description".to_owned(), Value::from(description)),
        ("created".to_owned(), now()),
        ("status".to_owned(), Value::from("pending")),
        ("resident_on".to_owned(), Value::from(host)),
        ("progress".to_owned(), Value::Double(0.0)),
    ]
    .into();
    db.insert(Class::Task, fields)
}

/// Run `Async.<message>`: answer a new task at once and do the work on a thread of its own,
/// which completes the task.
pub(super) fn run_async(lab: &Lab, run: Handler, call: Invocation) -> Response {
    let task = lab.create_task(&call.method)?;
    let worker = lab.clone();
    let worker_task = task.clone();
    let running = lab.run_task(&task);
    let spawned = std::thread::Builder::new()
        .name("lab-async".into())
        .spawn(move || {
            let _running = running;
            let outcome = run(&worker, &call);
            // The client may have destroyed the task meanwhile; then nobody is waiting.
            let _ = worker.complete_task(&worker_task, outcome);
        });
    if let Err(e) = spawned {
        lab.complete_task(
            &task,
            Err(xapi_errors::internal(format!(
                "cannot start a worker thread: {e}"
            ))),
        )?;
    }
    Ok(Value::from(task))
}

/// End a pending (or cancelling) task with a call's outcome; a task already ended is left as
/// it is. Fails with `HANDLE_INVALID` if the task no longer exists.
fn end_task(db: &mut Db, task: &str, outcome: &Response) -> Result<(), XapiFault> {
    let status = db.text(Class::Task, task, "status")?;
    if !matches!(status, "pending" | "cancelling") {
        return Ok(());
    }
    let (status, result, error_info) = match outcome {
        Ok(value) if *value == Value::void() => ("success", String::new(), Vec::new()),
        Ok(value) => (
            "success",
            encode_value(value, IntEncoding::AsString),
            Vec::new(),
        ),
        Err(fault) => {
            let status = if fault.code == "TASK_CANCELLED" {
                "cancelled"
            } else {
                "failure"
            };
            let info = std::iter::once(fault.code.clone())
                .chain(fault.params.iter().cloned())
                .collect();
            (status, String::new(), info)
        }
    };
    db.set(Class::Task, task, "result", Value::from(result))?;
    db.set(Class::Task, task, "error_info", Value::from(error_info))?;
    db.set(Class::Task, task, "progress", Value::Double(1.0))?;
    db.set(Class::Task, task, "finished", now())?;
    db.set(Class::Task, task, "status", Value::from(status))?;
    Ok(())
}

impl Lab {
    /// A new pending task, e.g. for a transfer started without a `task_id`.
    pub fn create_task(&self, label: &str) -> Result<String, XapiFault> {
        self.with_db_mut(|db| Ok(new_task(db, label, "")))
    }

    /// End a pending (or cancelling) task with a call's outcome; a task already ended is
    /// left as it is. Fails with `HANDLE_INVALID` if the task no longer exists.
    pub fn complete_task(&self, task: &str, outcome: Response) -> Result<(), XapiFault> {
        self.with_db_mut(|db| end_task(db, task, &outcome))
    }

    /// Mark `task` as run from now until the returned guard drops: `task.cancel` then leaves
    /// it `cancelling` for the runner, which must end the task before it drops the guard.
    /// Taken under the database lock, under which `task.cancel` decides.
    pub(crate) fn run_task(&self, task: &str) -> TaskRun {
        self.with_db(|_| self.running_tasks().lock().insert(task.to_owned()));
        TaskRun {
            lab: self.clone(),
            task: task.to_owned(),
        }
    }

    /// Report a pending task's progress, from 0.0 to 1.0.
    pub fn set_task_progress(&self, task: &str, progress: f64) -> Result<(), XapiFault> {
        self.with_db_mut(|db| {
            db.set(
                Class::Task,
                task,
                "progress",
                Value::Double(progress.clamp(0.0, 1.0)),
            )?;
            Ok(())
        })
    }

    /// Whether `task` names an existing task (a `task_id` a client gave a transfer).
    pub fn task_exists(&self, task: &str) -> bool {
        self.with_db(|db| db.exists(Class::Task, task))
    }

    /// Whether a client asked to cancel the task (`task.cancel`): it is `cancelling`, or
    /// already `cancelled` because it was cancelled before its runner took it.
    pub fn task_cancelling(&self, task: &str) -> bool {
        self.with_db(|db| {
            db.text(Class::Task, task, "status")
                .is_ok_and(|s| matches!(s, "cancelling" | "cancelled"))
        })
    }
}
