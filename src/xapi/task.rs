//! XAPI tasks: create one to pass as `task_id` to a data-plane request, wait for it with a
//! timeout, read its outcome, cancel it. A task is the authority on whether a transfer
//! succeeded, whatever the HTTP status said.

use std::time::{Duration, Instant};

use super::client::{ClientError, XapiClient};
use super::connection::TransportError;
use super::records::{TaskRecord, TaskStatus};
use super::rpc::{Value, XapiFault};

/// How often a waiting task is polled: quickly at first, then backing off.
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(500);

impl XapiClient {
    /// `task.create(label, description)`: the new task's reference.
    pub async fn create_task(&self, label: &str, description: &str) -> Result<String, ClientError> {
        let value = self
            .call(
                "task.create",
                vec![Value::from(label), Value::from(description)],
            )
            .await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol {
                host: self.host(),
                method: "task.create".into(),
                message: "the answer is not a reference".into(),
            })
    }

    /// Poll the task until it finishes or `timeout` passes. A finished task is returned
    /// whatever its status; see [`XapiClient::task_outcome`] for success or an error.
    pub async fn wait_task(
        &self,
        task: &str,
        timeout: Duration,
    ) -> Result<TaskRecord, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_POLL;
        loop {
            let record: TaskRecord = self.get_record(task).await?;
            if record.status.is_finished() {
                return Ok(record);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Transport(TransportError::Timeout {
                    host: self.host(),
                    after: timeout,
                    during: "waiting for a task",
                }));
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// Wait for the task and turn its outcome into a result: the task's `result` text on
    /// success, its `error_info` as an XAPI error otherwise.
    pub async fn task_outcome(&self, task: &str, timeout: Duration) -> Result<String, ClientError> {
        let record = self.wait_task(task, timeout).await?;
        task_result(&record).map_err(|fault| ClientError::Xapi {
            host: self.host(),
            method: format!("task {}", record.name_label),
            fault,
        })
    }

    /// `task.cancel`; a task that already finished is not an error.
    pub async fn cancel_task(&self, task: &str) -> Result<(), ClientError> {
        match self.call("task.cancel", vec![Value::from(task)]).await {
            Err(e) if e.xapi_code() == Some("OPERATION_NOT_ALLOWED") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// `task.destroy`, for tasks this client created.
    pub async fn destroy_task(&self, task: &str) -> Result<(), ClientError> {
        self.call("task.destroy", vec![Value::from(task)])
            .await
            .map(|_| ())
    }
}

/// A finished task's outcome: its result text, or its error as a fault.
pub fn task_result(record: &TaskRecord) -> Result<String, XapiFault> {
    match record.status {
        TaskStatus::Success => Ok(record.result.clone()),
        TaskStatus::Cancelled | TaskStatus::Cancelling => Err(XapiFault::new(
            "TASK_CANCELLED",
            [record.name_label.clone()],
        )),
        TaskStatus::Failure | TaskStatus::Pending => {
            let mut info = record.error_info.iter().cloned();
            let code = info.next().unwrap_or_else(|| "INTERNAL_ERROR".into());
            Err(XapiFault::new(code, info.collect::<Vec<_>>()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: TaskStatus, result: &str, error_info: &[&str]) -> TaskRecord {
        TaskRecord {
            uuid: "u".into(),
            name_label: "export".into(),
            status,
            progress: 1.0,
            result: result.into(),
            error_info: error_info.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn outcome_of_finished_tasks() {
        assert_eq!(
            task_result(&task(
                TaskStatus::Success,
                "<value>OpaqueRef:x</value>",
                &[]
            ))
            .unwrap(),
            "<value>OpaqueRef:x</value>"
        );
        let failed = task_result(&task(
            TaskStatus::Failure,
            "",
            &["VDI_IO_ERROR", "Device I/O errors"],
        ))
        .unwrap_err();
        assert_eq!(failed.code, "VDI_IO_ERROR");
        assert_eq!(failed.params, ["Device I/O errors"]);
        let cancelled = task_result(&task(TaskStatus::Cancelled, "", &[])).unwrap_err();
        assert_eq!(cancelled.code, "TASK_CANCELLED");
        let bare = task_result(&task(TaskStatus::Failure, "", &[])).unwrap_err();
        assert_eq!(bare.code, "INTERNAL_ERROR");
    }
}
