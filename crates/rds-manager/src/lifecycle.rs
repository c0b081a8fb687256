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
/// RUNNING → STOPPING → STOPPED → STARTING; RUNNING → STOPPED when the reconciler finds it dead;
/// anything but DELETED → DELETED or ERROR.
pub fn check(from: VmState, to: VmState) -> Result<(), IllegalTransition> {
    use VmState::*;
    let ok = match (from, to) {
        (Deleted, _) => false,
        (_, Deleted) => true,
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
            (Creating, Deleted),
            (Starting, Running),
            (Starting, Stopped),
            (Starting, Error),
            (Starting, Deleted),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Error),
            (Running, Deleted),
            (Stopping, Stopped),
            (Stopping, Error),
            (Stopping, Deleted),
            (Stopped, Starting),
            (Stopped, Error),
            (Stopped, Deleted),
            (Error, Deleted),
        ];
        for from in VmState::ALL {
            for to in VmState::ALL {
                assert_eq!(
                    check(from, to).is_ok(),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn deleted_is_terminal_and_running_cannot_restart() {
        assert!(check(Deleted, Running).is_err());
        assert!(check(Running, Starting).is_err());
        assert_eq!(
            check(Stopped, Stopping).unwrap_err().to_string(),
            "VM is STOPPED; it cannot become STOPPING"
        );
    }
}
