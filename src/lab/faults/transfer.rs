//! One transfer's armed faults as a state machine: [`TransferFaults::step`] says what to do
//! with the transfer's next bytes (wait, pass some of them, end the transfer), claiming each
//! fault from the registry only as it fires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::FaultId;
use super::registry::{Registry, lock};
use super::spec::{FaultKind, Plane, Planes};

impl FaultKind {
    /// What this fault does to a transfer on `plane`, if anything.
    fn effect(&self, plane: Plane) -> Option<Effect> {
        let cut = |after, how| Some(Effect::Cut { after, how });
        match (self, plane) {
            (FaultKind::DropExport { after_bytes }, Plane::Export)
            | (FaultKind::DropImport { after_bytes }, Plane::Import)
            | (FaultKind::DropNbd { after_bytes }, Plane::Nbd) => cut(*after_bytes, CutKind::Drop),
            (FaultKind::FailExport, Plane::Export) | (FaultKind::FailImport, Plane::Import) => {
                cut(0, CutKind::Fail)
            }
            (FaultKind::EmbeddedError { after_bytes }, Plane::Export) => {
                cut(*after_bytes, CutKind::Fail)
            }
            (
                FaultKind::Stall {
                    on,
                    seconds,
                    after_bytes,
                },
                _,
            ) if *on == plane => Some(Effect::Stall {
                after: *after_bytes,
                wait: Duration::from_secs(*seconds),
            }),
            (
                FaultKind::Bandwidth {
                    bytes_per_second,
                    on,
                },
                _,
            ) if matches!(
                (on, plane),
                (Planes::Both, _)
                    | (Planes::Export, Plane::Export)
                    | (Planes::Import, Plane::Import)
            ) =>
            {
                Some(Effect::Throttle {
                    rate: *bytes_per_second,
                })
            }
            _ => None,
        }
    }
}

/// How a transfer is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// The connection closes with nothing more said; the task fails.
    Drop,
    /// The task fails with `VDI_IO_ERROR`, and an export says so in an embedded 500.
    Fail,
}

/// A transfer cut short by fault `fault` after `at` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub fault: FaultId,
    pub at: u64,
    pub how: CutKind,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.how {
            CutKind::Drop => "connection dropped",
            CutKind::Fail => "transfer failed",
        };
        write!(
            f,
            "{what} after {} bytes by injected fault {}",
            self.at, self.fault
        )
    }
}

/// What to do with a transfer's next bytes: wait, pass the first `pass` of them, then end
/// the transfer if `cut`. Without a cut, `pass` is at least one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub wait: Duration,
    pub pass: usize,
    pub cut: Option<Cut>,
}

/// The faults one transfer has armed.
#[derive(Debug)]
pub struct TransferFaults {
    registry: Arc<Mutex<Registry>>,
    armed: Vec<Armed>,
}

#[derive(Debug)]
struct Armed {
    id: FaultId,
    effect: Effect,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not fired yet.
    Armed,
    /// A limit that fired and holds for the rest of the transfer.
    Holding,
    /// Fired, or claimed by someone else or cleared before it could.
    Spent,
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Cut { after: u64, how: CutKind },
    Stall { after: u64, wait: Duration },
    Throttle { rate: u64 },
}

/// A throttled transfer passes at most this fraction of a second's worth of bytes at a time,
/// so its pace stays even whatever its frame size.
const THROTTLE_SLICES_PER_SECOND: u64 = 8;
/// … but never fewer bytes than this at a time.
const THROTTLE_MIN_SLICE: u64 = 512;

impl TransferFaults {
    /// The faults of `registry` that a transfer on `plane` of the VDI known by `vdi` meets,
    /// armed but not fired.
    pub(super) fn arm(registry: &Arc<Mutex<Registry>>, plane: Plane, vdi: &[&str]) -> Self {
        let armed = lock(registry)
            .faults
            .iter()
            .filter(|f| f.spec.vdi.as_ref().is_none_or(|v| v.matches(vdi)))
            .filter_map(|f| {
                Some(Armed {
                    id: f.id,
                    effect: f.spec.kind.effect(plane)?,
                    state: State::Armed,
                })
            })
            .collect();
        TransferFaults {
            registry: Arc::clone(registry),
            armed,
        }
    }

    /// Claim fault `at` from the registry as it fires: `false` if it is gone.
    fn claim(&mut self, at: usize, then: State) -> bool {
        let fired = lock(&self.registry).fire(self.armed[at].id);
        self.armed[at].state = if fired { then } else { State::Spent };
        fired
    }

    /// The transfer has passed `done` bytes, has `len` more at hand, and started `elapsed`
    /// ago: what to do with them.
    pub fn step(&mut self, done: u64, len: usize, elapsed: Duration) -> Step {
        let mut wait = Duration::ZERO;
        let mut limit = len as u64;
        let mut rate: Option<u64> = None;
        for at in 0..self.armed.len() {
            let Armed { effect, state, .. } = self.armed[at];
            match effect {
                Effect::Stall { after, wait: stall } if state == State::Armed => {
                    if after > done {
                        limit = limit.min(after - done);
                    } else if self.claim(at, State::Spent) {
                        wait = wait.saturating_add(stall);
                    }
                }
                Effect::Throttle { rate: r }
                    if state == State::Holding
                        || (state == State::Armed && self.claim(at, State::Holding)) =>
                {
                    rate = Some(rate.map_or(r, |other| other.min(r)));
                }
                _ => {}
            }
        }
        if let Some(rate) = rate {
            limit = limit.min((rate / THROTTLE_SLICES_PER_SECOND).max(THROTTLE_MIN_SLICE));
        }
        let cut = self.cut_within(done, &mut limit);
        if let Some(rate) = rate {
            let due = Duration::try_from_secs_f64((done + limit) as f64 / rate as f64)
                .unwrap_or(Duration::MAX);
            wait = wait.saturating_add(due.saturating_sub(elapsed));
        }
        Step {
            wait,
            pass: limit as usize,
            cut,
        }
    }

    /// The earliest cut among the next `limit` bytes, which it shortens to the bytes before
    /// the cut. A cut exactly at the end of the bytes at hand waits: the transfer may end
    /// there.
    fn cut_within(&mut self, done: u64, limit: &mut u64) -> Option<Cut> {
        loop {
            let (at, after, how) = self
                .armed
                .iter()
                .enumerate()
                .filter(|(_, a)| a.state == State::Armed)
                .filter_map(|(at, a)| match a.effect {
                    Effect::Cut { after, how } if after < done + *limit => Some((at, after, how)),
                    _ => None,
                })
                .min_by_key(|(_, after, _)| *after)?;
            if self.claim(at, State::Spent) {
                // A cut is never armed behind the bytes already passed: it would have fired.
                let at_byte = after.max(done);
                *limit = at_byte - done;
                return Some(Cut {
                    fault: self.armed[at].id,
                    at: at_byte,
                    how,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::faults::{FaultSpec, Faults, VdiFilter};

    fn data(kind: FaultKind, persistent: bool) -> FaultSpec {
        FaultSpec {
            kind,
            persistent,
            vdi: None,
        }
    }

    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn a_drop_cuts_at_the_exact_byte_and_fires_once() {
        let faults = Faults::default();
        let id = faults.inject(data(FaultKind::DropExport { after_bytes: 1000 }, false));
        let mut transfer = faults.arm(Plane::Export, &["OpaqueRef:x", "x"]);
        // An import meets no export fault.
        assert!(faults.arm(Plane::Import, &[]).armed.is_empty());
        let step = transfer.step(0, 600, ZERO);
        assert_eq!((step.pass, step.cut), (600, None));
        let step = transfer.step(600, 600, ZERO);
        let cut = Cut {
            fault: id,
            at: 1000,
            how: CutKind::Drop,
        };
        assert_eq!((step.pass, step.cut), (400, Some(cut)));
        assert_eq!(
            cut.to_string(),
            format!("connection dropped after 1000 bytes by injected fault {id}")
        );
        assert!(faults.list().is_empty());
        // A transfer armed afterwards passes everything.
        let step = faults.arm(Plane::Export, &[]).step(0, 5000, ZERO);
        assert_eq!((step.pass, step.cut), (5000, None));
    }

    #[test]
    fn a_cut_at_the_very_end_waits_for_more_bytes() {
        let faults = Faults::default();
        faults.inject(data(FaultKind::EmbeddedError { after_bytes: 100 }, false));
        let mut transfer = faults.arm(Plane::Export, &[]);
        assert_eq!(transfer.step(0, 100, ZERO).cut, None);
        // The export ended there: the fault never fired and stays.
        assert_eq!(faults.list().len(), 1);
        let step = transfer.step(100, 10, ZERO);
        assert_eq!(step.pass, 0);
        assert_eq!(step.cut.map(|c| (c.at, c.how)), Some((100, CutKind::Fail)));
    }

    #[test]
    fn a_one_shot_fault_armed_by_two_transfers_fires_in_one() {
        let faults = Faults::default();
        faults.inject(data(FaultKind::FailImport, false));
        let mut first = faults.arm(Plane::Import, &[]);
        let mut second = faults.arm(Plane::Import, &[]);
        assert!(first.step(0, 10, ZERO).cut.is_some());
        assert_eq!(second.step(0, 10, ZERO).cut, None);

        // Persistent: both fire, and it stays.
        faults.inject(data(FaultKind::DropImport { after_bytes: 5 }, true));
        let mut first = faults.arm(Plane::Import, &[]);
        let mut second = faults.arm(Plane::Import, &[]);
        assert_eq!(first.step(0, 10, ZERO).pass, 5);
        assert_eq!(second.step(0, 10, ZERO).pass, 5);
        assert_eq!(faults.list()[0].fired, 2);

        // Cleared before it fires: it does not.
        let mut third = faults.arm(Plane::Import, &[]);
        faults.clear(None);
        assert_eq!(third.step(0, 10, ZERO).cut, None);
    }

    #[test]
    fn faults_restricted_to_a_vdi_meet_only_its_transfers() {
        let faults = Faults::default();
        faults.inject(FaultSpec {
            kind: FaultKind::FailExport,
            persistent: true,
            vdi: Some(VdiFilter {
                reference: "OpaqueRef:a".into(),
                uuid: "a".into(),
            }),
        });
        assert!(
            faults
                .arm(Plane::Export, &["OpaqueRef:b", "b"])
                .armed
                .is_empty()
        );
        assert_eq!(
            faults.arm(Plane::Export, &["OpaqueRef:a", "a"]).armed.len(),
            1
        );
        assert_eq!(faults.arm(Plane::Export, &["a"]).armed.len(), 1);
    }

    #[test]
    fn a_stall_waits_once_at_its_byte() {
        let faults = Faults::default();
        faults.inject(data(
            FaultKind::Stall {
                on: Plane::Import,
                seconds: 3,
                after_bytes: 50,
            },
            false,
        ));
        let mut transfer = faults.arm(Plane::Import, &[]);
        let step = transfer.step(0, 80, ZERO);
        assert_eq!((step.wait, step.pass), (ZERO, 50));
        let step = transfer.step(50, 30, ZERO);
        assert_eq!((step.wait, step.pass), (Duration::from_secs(3), 30));
        let step = transfer.step(80, 30, ZERO);
        assert_eq!((step.wait, step.pass), (ZERO, 30));
        assert!(faults.list().is_empty());
    }

    #[test]
    fn bandwidth_paces_the_bytes_in_slices() {
        let faults = Faults::default();
        faults.inject(data(
            FaultKind::Bandwidth {
                bytes_per_second: 8000,
                on: Planes::Export,
            },
            true,
        ));
        assert!(faults.arm(Plane::Import, &[]).armed.is_empty());
        let mut transfer = faults.arm(Plane::Export, &[]);
        // At most 1/8 s worth at a time, each due when the rate allows it.
        let step = transfer.step(0, 100_000, ZERO);
        assert_eq!(step.pass, 1000);
        assert_eq!(step.wait, Duration::from_millis(125));
        let step = transfer.step(4000, 100_000, Duration::from_millis(200));
        assert_eq!(step.pass, 1000);
        assert_eq!(step.wait, Duration::from_millis(425));
        // Behind schedule: no wait.
        let step = transfer.step(4000, 10, Duration::from_secs(9));
        assert_eq!((step.wait, step.pass), (ZERO, 10));
        // A persistent limit fires once per transfer.
        assert_eq!(faults.list()[0].fired, 1);
    }
}
