//! The VM state machine: the one place that decides which state changes are legal.

use rds_store::VmState;

/// A state change the machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM is {from}; it cannot become {to}")]
pub struct IllegalTransition {
    /// Current state.
    pub from: VmState,
    /// Requested state.
    pub to: VmState,
}

/// Checks that a VM in `from` may move to `to`.
///
/// CREATING/STARTING → RUNNING (or ERROR / back to STOPPED when a restart fails);
/// RUNNING → STOPPING → STOPPED → STARTING; RUNNING → STOPPED or ERROR when its process dies;
/// ERROR → STARTING (a retry); any live state → ERROR; any state but DELETED → DELETING, and
/// only DELETING → DELETED, so a delete is always recorded before anything is destroyed.
pub fn check(from: VmState, to: VmState) -> Result<(), IllegalTransition> {
    use VmState::*;
    let ok = match (from, to) {
        (Deleted, _) => false,
        (Deleting, Deleted) => true,
        (Deleting, _) => false,
        (_, Deleting) => true,
        (_, Deleted) => false,
        (Error, Starting) => true,
        (Error, _) => false,
        (_, Error) => true,
        (Creating, Running) => true,
        (Starting, Running | Stopped) => true,
        (Running, Stopping | Stopped) => true,
        (Stopping, Stopped) => true,
        (Stopped, Starting) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let legal = [
            (Creating, Running),
            (Creating, Error),
            (Creating, Deleting),
            (Starting, Running),
            (Starting, Stopped),
            (Starting, Error),
            (Starting, Deleting),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Error),
            (Running, Deleting),
            (Stopping, Stopped),
            (Stopping, Error),
            (Stopping, Deleting),
            (Stopped, Starting),
            (Stopped, Error),
            (Stopped, Deleting),
            (Error, Starting),
            (Error, Deleting),
            (Deleting, Deleted),
        ];
        for from in VmState::ALL {
            for to in VmState::ALL {
                assert_eq!(check(from, to).is_ok(), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn deleted_is_terminal_and_running_cannot_restart() {
        assert!(check(Deleted, Running).is_err());
        // A delete in progress can only finish: never back to a state that could run again.
        assert!(check(Deleting, Stopped).is_err());
        assert!(check(Running, Deleted).is_err(), "DELETED only after DELETING was recorded");
        assert!(check(Running, Starting).is_err());
        assert_eq!(check(Stopped, Stopping).unwrap_err().to_string(), "VM is STOPPED; it cannot become STOPPING");
    }
}
